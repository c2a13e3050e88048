"""Classification metrics and confusion rows on a hand-made example."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from imgrec.evaluation import classification_metrics, confusion_rows

NAMES = ["ant", "bee", "cow"]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])
# By hand: ant precision 1/2 recall 1/2; bee precision 2/3 recall 1; cow precision 1 recall 1/2.
PRECISION = {"ant": 1 / 2, "bee": 2 / 3, "cow": 1.0}
RECALL = {"ant": 1 / 2, "bee": 1.0, "cow": 1 / 2}
F1 = {name: 2 * PRECISION[name] * RECALL[name] / (PRECISION[name] + RECALL[name]) for name in NAMES}


def test_accuracy_and_per_class_by_hand():
    metrics = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert list(metrics["per_class"]) == NAMES
    for name in NAMES:
        per_class = metrics["per_class"][name]
        assert per_class["precision"] == pytest.approx(PRECISION[name])
        assert per_class["recall"] == pytest.approx(RECALL[name])
        assert per_class["f1"] == pytest.approx(F1[name])
        assert per_class["support"] == 2


def test_macro_matches_hand_and_sklearn():
    macro = classification_metrics(Y_TRUE, Y_PRED, NAMES)["macro"]
    assert macro["precision"] == pytest.approx(np.mean(list(PRECISION.values())))
    assert macro["recall"] == pytest.approx(np.mean(list(RECALL.values())))
    assert macro["f1"] == pytest.approx(np.mean(list(F1.values())))
    assert macro["precision"] == pytest.approx(precision_score(Y_TRUE, Y_PRED, average="macro"))
    assert macro["recall"] == pytest.approx(recall_score(Y_TRUE, Y_PRED, average="macro"))
    assert macro["f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))


def test_metrics_are_plain_python_for_json():
    metrics = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert type(metrics["accuracy"]) is float
    assert all(type(v) is float for v in metrics["macro"].values())
    assert type(metrics["per_class"]["ant"]["support"]) is int


def test_a_class_never_predicted_scores_zero_without_warnings():
    y_pred = np.array([0, 0, 0, 0, 2, 2])  # "bee" is never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's UndefinedMetricWarning would fail here
        per_class = classification_metrics(Y_TRUE, y_pred, NAMES)["per_class"]
    assert per_class["bee"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert per_class["cow"]["precision"] == 1.0


def test_confusion_rows_one_per_image_with_names():
    rows = confusion_rows(Y_TRUE, Y_PRED, NAMES)
    assert len(rows) == len(Y_TRUE)
    assert rows[1] == {"actual": "ant", "predicted": "bee"}
    assert rows[5] == {"actual": "cow", "predicted": "ant"}
    assert [r["actual"] for r in rows] == ["ant", "ant", "bee", "bee", "cow", "cow"]


def test_confusion_rows_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="zip"):
        confusion_rows(Y_TRUE, Y_PRED[:-1], NAMES)
