"""Classification metrics and confusion rows on a hand-made example."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from imgrec.training.evaluate import classification_metrics, confusion_rows, not_learned, save_rows

NAMES = ["ant", "bee", "cow"]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])
# By hand: ant precision 1/2 recall 1/2; bee precision 2/3 recall 1; cow precision 1 recall 1/2.
PRECISION = {"ant": 1 / 2, "bee": 2 / 3, "cow": 1.0}
RECALL = {"ant": 1 / 2, "bee": 1.0, "cow": 1 / 2}
F1 = {name: 2 * PRECISION[name] * RECALL[name] / (PRECISION[name] + RECALL[name]) for name in NAMES}


def test_accuracy_and_per_class_by_hand():
    metrics, per_class = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert metrics["val_accuracy"] == pytest.approx(4 / 6)
    assert [row["class"] for row in per_class] == NAMES
    for row in per_class:
        assert row["precision"] == pytest.approx(PRECISION[row["class"]])
        assert row["recall"] == pytest.approx(RECALL[row["class"]])
        assert row["f1"] == pytest.approx(F1[row["class"]])
        assert row["support"] == 2


def test_headline_is_accuracy_and_macro_f1_only():
    metrics, _ = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert set(metrics) == {"val_accuracy", "macro_f1"}
    assert metrics["macro_f1"] == pytest.approx(np.mean(list(F1.values())))
    assert metrics["macro_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))


def test_metrics_are_plain_python_for_json():
    metrics, per_class = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert all(type(v) is float for v in metrics.values())
    assert type(per_class[0]["support"]) is int


def test_a_class_never_predicted_scores_zero_without_warnings():
    y_pred = np.array([0, 0, 0, 0, 2, 2])  # "bee" is never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's UndefinedMetricWarning would fail here
        _, per_class = classification_metrics(Y_TRUE, y_pred, NAMES)
    assert per_class[1] == {
        "class": "bee",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 2,
    }
    assert per_class[2]["precision"] == 1.0


def test_save_rows_writes_what_dvc_plot_templates_read(tmp_path):
    _, per_class = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    save_rows(tmp_path / "per_class.csv", per_class)
    lines = (tmp_path / "per_class.csv").read_text().splitlines()
    assert lines[0] == "class,precision,recall,f1,support"
    assert lines[1].startswith("ant,0.5,0.5,0.5,2")
    assert len(lines) == 1 + len(NAMES)


def test_confusion_rows_one_per_image_with_names():
    rows = confusion_rows(Y_TRUE, Y_PRED, NAMES)
    assert len(rows) == len(Y_TRUE)
    assert rows[1] == {"actual": "ant", "predicted": "bee"}
    assert rows[5] == {"actual": "cow", "predicted": "ant"}
    assert [r["actual"] for r in rows] == ["ant", "ant", "bee", "bee", "cow", "cow"]


def test_confusion_rows_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="zip"):
        confusion_rows(Y_TRUE, Y_PRED[:-1], NAMES)


@pytest.mark.parametrize(
    ("accuracy", "labels", "says"),
    [
        (0.10, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], True),  # chance of ten balanced classes
        (0.18, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], True),  # within a tenth of the gap above it
        (0.20, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], False),
        (0.80, [0, 0, 0, 0, 0, 0, 0, 0, 1, 2], True),  # always answering the commonest class
        (0.99, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], False),
    ],
)
def test_a_model_near_chance_is_said_not_to_have_learned(accuracy, labels, says):
    line = not_learned(accuracy, np.array(labels), 10, 72, {"epochs": 3, "lr": 0.001})
    assert (line is not None) == says
    if says:
        assert "did not learn" in line and "72 to train on" in line and "epochs (3)" in line
