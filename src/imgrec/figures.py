"""The PNG figures: confusion matrix, sample predictions, recommendations.

PNGs are written without the Software/date metadata matplotlib would add,
so the same inputs give the same bytes.
"""

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files; no display is needed or wanted

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

from imgrec.stage import atomic_file


def save_png(fig: plt.Figure, path: str | os.PathLike, dpi: int = 100) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def confusion_matrix_figure(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> plt.Figure:
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
    images: Sequence[np.ndarray], true_names: Sequence[str], predicted_names: Sequence[str]
) -> plt.Figure:
    """Images in two rows with true and predicted labels; wrong predictions in red."""
    columns = max(1, (len(images) + 1) // 2)
    fig, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, true, predicted in zip(
        axes.flat, images, true_names, predicted_names, strict=False
    ):
        ax.imshow(image)
        ax.set_title(
            f"true: {true}\npred: {predicted}",
            fontsize=9,
            color="black" if true == predicted else "red",
        )
    fig.suptitle("Validation samples")
    fig.tight_layout()
    return fig


def neighbor_title(label: str, score: float) -> str:
    """The caption of one recommended item: its label and cosine score."""
    return f"{label}  {score:.3f}"


def recommendation_figure(
    query_images: Sequence[np.ndarray],
    query_titles: Sequence[str],
    neighbor_images: Sequence[Sequence[np.ndarray]],
    neighbor_titles: Sequence[Sequence[str]],
) -> plt.Figure:
    """One row per query: the query, then its neighbours best first."""
    rows = len(query_images)
    columns = 1 + max((len(n) for n in neighbor_images), default=0)
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r in range(rows):
        axes[r, 0].imshow(query_images[r])
        axes[r, 0].set_title(query_titles[r], fontsize=8, fontweight="bold")
        for c, (image, title) in enumerate(
            zip(neighbor_images[r], neighbor_titles[r], strict=True), start=1
        ):
            axes[r, c].imshow(image)
            axes[r, c].set_title(title, fontsize=8)
    fig.suptitle("Query (left) and its most similar items")
    fig.tight_layout()
    return fig
