"""Classification metrics from scikit-learn, shaped for `dvc metrics` and `dvc plots`."""

import csv
import os
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from imgrec.config import ComputeConfig
from imgrec.files import atomic_file


@dataclass(frozen=True)
class EvaluateConfig(ComputeConfig):
    pass


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> tuple[dict, list[dict]]:
    """(headline metrics, one row per class): what `dvc metrics show` shows, and the detail."""
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    macro_f1 = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )[2]
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    # The restored best epoch's weights: the one validation accuracy the pipeline reports.
    headline = {"val_accuracy": float(accuracy_score(y_true, y_pred)), "macro_f1": float(macro_f1)}
    return headline, per_class


# "Near chance": less than this share of the way from chance to a perfect score.
CHANCE_MARGIN = 0.1


def not_learned(
    val_accuracy: float, y_true: np.ndarray, n_classes: int, train_images: int, train_config: dict
) -> str | None:
    """One line when validation accuracy is near chance (the better of guessing uniformly and
    always answering the commonest class), naming the likely causes; None otherwise."""
    counts = np.bincount(y_true, minlength=n_classes)
    chance = max(1 / n_classes, counts.max() / max(len(y_true), 1))
    if val_accuracy >= chance + CHANCE_MARGIN * (1 - chance):
        return None
    return (
        f"the model did not learn: validation accuracy {val_accuracy:.3f} is near chance "
        f"({chance:.3f}); likely too few images ({train_images} to train on, "
        f"{n_classes} classes) or epochs ({train_config.get('epochs', '?')}), or an lr "
        f"({train_config.get('lr', '?')}) too high or too low for them"
    )


def save_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """A CSV with a header from the first row's keys: what DVC's plot templates read."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> list[dict]:
    """One {actual, predicted} row per image, the input of DVC's `confusion` template."""
    return [
        {"actual": class_names[t], "predicted": class_names[p]}
        for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True)
    ]
