"""Classification metrics from scikit-learn, shaped for `dvc metrics` and `dvc plots`."""

import csv
import os

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from imgrec.files import atomic_file


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1, and the same per class (keyed by class name)."""
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    macro = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": float(macro[2])},
        "per_class": per_class,
    }


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> list[dict]:
    """One {actual, predicted} row per image, the input of DVC's `confusion` template."""
    return [
        {"actual": class_names[t], "predicted": class_names[p]}
        for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True)
    ]


def save_confusion_rows(
    path: str | os.PathLike, y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> None:
    """The CSV DVC's `confusion` template reads: a header, then one row per image."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["actual", "predicted"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(confusion_rows(y_true, y_pred, class_names))
