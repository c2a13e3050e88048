"""`imgrec review` on a tiny catalog and audit report made here: what each action writes to
the corrections file, and the one-sentence refusals."""

import json

import numpy as np
import pytest
import yaml
from conftest import ROOT

from imgrec.cli import main
from imgrec.data import corrections
from imgrec.data.corrections import Correction
from imgrec.data.prepared import IMAGES_FILE, save_prepared_labels
from imgrec.recommender.audit_report import AuditReport, DuplicateGroup, SuspectLabel, save_report
from imgrec.serving.query import DEFAULT_CORRECTIONS

CLASSES = ["cat", "dog", "fox"]


def _prepared(folder, labels, split=True):
    folder.mkdir(parents=True)
    n = len(labels)
    np.save(folder / IMAGES_FILE, np.zeros((n, 2, 2, 3), np.uint8))
    positions = np.arange(n)
    save_prepared_labels(folder, labels=np.array(labels), row_ids=positions * 10,
                         train_index=positions[: n - 2] if split else positions[:0],
                         val_index=positions[n - 2 :] if split else positions[:0],
                         class_names=CLASSES, img_size=2)  # fmt: skip


@pytest.fixture
def project(tmp_dir):
    """Rows 0, 10, ..., 70; row 20 a dog among cats (suggested cat), row 50 a cat among
    dogs; rows 30, 40 and 60 one duplicate group."""
    (tmp_dir / "dvc.yaml").write_text("stages: {}\n")
    _prepared(tmp_dir / "data/catalog/prepared", [0, 0, 1, 0, 0, 0, 0, 2])
    suspects = [SuspectLabel(20, "dog", "cat", 0.9), SuspectLabel(50, "cat", "dog", 0.7)]
    duplicates = [DuplicateGroup((30, 40, 60), "near", 0.97)]
    save_report(tmp_dir / "reports/audit.json", AuditReport(duplicates, [], suspects, []))
    return tmp_dir


def _file(project):
    return corrections.load(project / "labels/corrections.csv")


def test_accept_all_takes_every_undecided_suggestion(project, capsys):
    assert main(["review", "relabel", "50", "fox"]) == 0
    assert main(["review", "accept-all"]) == 0
    assert _file(project) == [
        Correction(20, "dog", "relabel", "cat"),
        Correction(50, "cat", "relabel", "fox"),  # decided before: not overwritten
    ]
    assert "1 decision(s) recorded; 2 in all, 2 to apply" in capsys.readouterr().out


def test_suggestions_lists_the_undecided_and_json_with_all_lists_every_one(project, capsys):
    main(["review", "accept", "20"])
    capsys.readouterr()
    assert main(["review", "suggestions"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 of 2 suggestions undecided") and "50" in out and "dog" in out
    main(["review", "suggestions", "--all", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [(s["row_id"], s["decision"]) for s in listed] == [(20, "relabel -> cat"), (50, "-")]


def test_keep_one_drops_the_rest_of_the_group_and_forget_undoes(project):
    main(["review", "keep-one", "40", "--keep", "60"])
    assert _file(project) == [
        Correction(30, "cat", "drop"),
        Correction(40, "cat", "drop"),
        Correction(60, "cat", "keep"),
    ]
    main(["review", "forget", "30", "40"])
    assert _file(project) == [Correction(60, "cat", "keep")]


def test_drop_and_keep_record_the_label_seen(project):
    main(["review", "drop", "70"])
    main(["review", "keep", "0", "10"])
    assert _file(project) == [
        Correction(0, "cat", "keep"),
        Correction(10, "cat", "keep"),
        Correction(70, "fox", "drop"),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["relabel", "20", "cow"], "'cow' is not a class; the classes are cat, dog, fox"),
        (["drop", "25"], "row 25 is not in the catalog"),
        (["accept", "10"], "no suspect label at row 10"),
        (["keep-one", "10"], "row 10 is in no duplicate group"),
        (["keep-one", "30", "--keep", "20"], "row 20 is not in the duplicate group of row 30"),
    ],
)
def test_a_bad_decision_is_one_error_line_and_writes_nothing(project, capsys, argv, message):
    assert main(["review", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (project / "labels/corrections.csv").exists()


def test_a_catalog_apart_from_the_training_data_is_refused(tmp_dir, capsys):
    (tmp_dir / "dvc.yaml").write_text("stages: {}\n")
    _prepared(tmp_dir / "data/catalog/prepared", [0, 1, 0, 1], split=False)
    save_report(tmp_dir / "reports/audit.json", AuditReport([], [], [], []))
    assert main(["review", "accept-all"]) == 1
    assert "the catalog is apart from the training data" in capsys.readouterr().err


def test_the_default_corrections_file_is_the_one_prepare_reads():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert f"--corrections {DEFAULT_CORRECTIONS}" in stages["prepare"]["cmd"]
    assert DEFAULT_CORRECTIONS in stages["prepare"]["deps"]
    assert corrections.load(ROOT / DEFAULT_CORRECTIONS) == []  # shipped empty, with its header
