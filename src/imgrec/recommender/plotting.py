"""Figures as files, for every stage that draws: confusion matrix, sample predictions,
rows of recommendations.

PNGs are written without the Software/date metadata matplotlib would add,
so the same inputs give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files; no display is needed or wanted

import matplotlib.pyplot as plt
import numpy as np

from imgrec.data.prepared import Prepared
from imgrec.files import atomic_file

# Per format, the metadata matplotlib would stamp (tool version, date): left out.
_NO_STAMPS = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
    "jpg": None,
    "jpeg": None,
}


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write `fig` in the format its extension names (PNG when it names none we know)."""
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    fmt = suffix if suffix in _NO_STAMPS else "png"
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_NO_STAMPS[fmt])
    plt.close(fig)


def confusion_matrix_figure(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> plt.Figure:
    # Here, not at the top: sklearn.metrics costs 1.3 s a process, and only evaluate draws this.
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(6.0, 0.45 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=np.arange(len(class_names)),
        display_labels=class_names,
        ax=ax,
        colorbar=False,
        cmap="Blues",
        xticks_rotation="vertical",
    )
    ax.set_title(f"Validation confusion matrix ({len(y_true)} images)")
    fig.tight_layout()
    return fig


def prediction_grid_figure(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    probabilities: Sequence[float],
    title: str = "Validation samples",
) -> plt.Figure:
    """Images in two rows with true label, prediction and its probability; wrong ones in red."""
    columns = max(1, (len(images) + 1) // 2)
    fig, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, true, predicted, probability in zip(
        axes.flat, images, true_names, predicted_names, probabilities, strict=False
    ):
        ax.imshow(image)
        ax.set_title(
            f"true: {true}\npred: {predicted} ({probability:.2f})",
            fontsize=9,
            color="black" if true == predicted else "red",
        )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def validation_samples_figure(
    data: Prepared, probabilities: np.ndarray, class_names: list[str], count: int = 10
) -> plt.Figure:
    """`count` validation images: the misclassified first, then correct ones evenly spaced."""
    y_true, y_pred = data.labels[data.val_index], probabilities.argmax(1)
    wrong = np.flatnonzero(y_true != y_pred)[:count]
    right = np.flatnonzero(y_true == y_pred)
    fill = min(count - len(wrong), len(right))
    picks = np.concatenate([wrong, right[np.linspace(0, len(right) - 1, fill).astype(int)]])
    return prediction_grid_figure(
        [data.images[data.val_index[i]] for i in picks],
        [class_names[y_true[i]] for i in picks],
        [class_names[y_pred[i]] for i in picks],
        [float(probabilities[i, y_pred[i]]) for i in picks],
        title=f"Validation samples: {len(np.flatnonzero(y_true != y_pred))} of {len(y_true)} "
        "misclassified (shown first, in red); probability of the prediction in brackets",
    )


def neighbor_title(label: str, score: float, row_id: int | None = None) -> str:
    """The caption of one recommended item: its row id, label and cosine score."""
    return f"{'' if row_id is None else f'#{row_id}  '}{label}  {score:.3f}"


def recommendation_figure(
    query_images: Sequence[np.ndarray],
    query_titles: Sequence[str],
    neighbor_images: Sequence[Sequence[np.ndarray]],
    neighbor_titles: Sequence[Sequence[str]],
    title: str = "Query (left) and its most similar items",
) -> plt.Figure:
    """One row per query: the query, then its neighbours best first."""
    rows = len(query_images)
    columns = 1 + max((len(n) for n in neighbor_images), default=0)
    # constrained layout leaves room for a two-line suptitle; tight_layout does not.
    fig, axes = plt.subplots(
        rows, columns, figsize=(2 * columns, 2.3 * rows + 0.3), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for r in range(rows):
        axes[r, 0].imshow(query_images[r])
        axes[r, 0].set_title(query_titles[r], fontsize=8, fontweight="bold")
        for c, (image, caption) in enumerate(
            zip(neighbor_images[r], neighbor_titles[r], strict=True), start=1
        ):
            axes[r, c].imshow(image)
            axes[r, c].set_title(caption, fontsize=8)
    fig.suptitle(title)
    return fig


def message_figure(text: str) -> plt.Figure:
    """A figure that says there is nothing to draw (an output must still be a picture)."""
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    return fig
