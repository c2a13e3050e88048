"""The corrections file: its format, the upsert that the server and the CLI share, and the
plan prepare applies (what it skips and why)."""

import threading

import pytest

from imgrec.data import corrections
from imgrec.data.corrections import Correction
from imgrec.errors import ImgrecError


def test_save_writes_sorted_lf_rows_and_load_reads_them_back(tmp_path):
    path = tmp_path / "labels" / "corrections.csv"
    rows = [
        Correction(40, "5", "drop"),
        Correction(7, "3", "relabel", "8"),
        Correction(12, "", "keep"),
        Correction(9, "a, b", "relabel", 'say "c"'),  # CSV quoting survives
    ]
    corrections.save(path, rows)
    assert path.read_bytes() == (
        b"row_id,label_seen,decision,new_label\n7,3,relabel,8\n"
        b'9,"a, b",relabel,"say ""c"""\n12,,keep,\n40,5,drop,\n'
    )
    assert corrections.load(path) == sorted(rows, key=lambda c: c.row_id)


def test_a_missing_file_is_no_corrections_and_a_header_alone_is_none_too(tmp_path):
    assert corrections.load(tmp_path / "nothing.csv") == []
    (tmp_path / "empty.csv").write_text("row_id,label_seen,decision,new_label\n")
    assert corrections.load(tmp_path / "empty.csv") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("row,label,decision,new\n", "first line must be"),
        ("row_id,label_seen,decision,new_label\nx,1,drop,\n", "line 2: row_id 'x' is no integer"),
        ("row_id,label_seen,decision,new_label\n1,1,burn,\n", "line 2: row 1: decision must"),
        ("row_id,label_seen,decision,new_label\n1,1,relabel,\n", "needs a new_label"),
        ("row_id,label_seen,decision,new_label\n1,1,drop,2\n", "only a relabel has one"),
        ("row_id,label_seen,decision,new_label\n1,1,relabel,1\n", "the decision is keep"),
        ("row_id,label_seen,decision,new_label\n1,1,drop\n", "expected 4 fields"),
        ("row_id,label_seen,decision,new_label\n-3,1,drop,\n", "integer >= 0"),
        ("row_id,label_seen,decision,new_label\n1,1,drop,\n1,1,keep,\n", "line 3: row 1 has"),
    ],
)
def test_a_bad_file_is_one_sentence_naming_the_line(tmp_path, text, message):
    path = tmp_path / "corrections.csv"
    path.write_text(text)
    with pytest.raises(ImgrecError, match=message):
        corrections.load(path)


def test_merge_upserts_by_row_forgets_and_keeps_the_first_label_seen():
    existing = [Correction(1, "3", "relabel", "8"), Correction(2, "4", "keep")]
    # Row 1 seen again after prepare relabelled it: the page shows "8"; the source holds "3".
    merged = corrections.merge(
        existing, [Correction(1, "8", "relabel", "9"), Correction(5, "0", "drop")], forget=[2]
    )
    assert merged == [Correction(1, "3", "relabel", "9"), Correction(5, "0", "drop")]


def test_a_relabel_back_to_the_source_label_is_recorded_as_keep():
    # labelled 3 in the source, relabelled to 8 and applied, then the reviewer (seeing 8)
    # relabels it back to 3: in the source's terms that is no change
    applied = [Correction(17, "3", "relabel", "8")]
    back = Correction(17, "8", "relabel", "3")
    assert corrections.merge(applied, [back]) == [Correction(17, "3", "keep")]
    other = Correction(17, "8", "relabel", "5")
    assert corrections.merge(applied, [other]) == [Correction(17, "3", "relabel", "5")]


def test_update_makes_the_file_and_concurrent_writers_lose_no_decision(tmp_path):
    path = tmp_path / "labels" / "corrections.csv"
    threads = [
        threading.Thread(target=corrections.update, args=(path, [Correction(i, "1", "drop")]))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [c.row_id for c in corrections.load(path)] == list(range(20))
    assert corrections.update(path, forget=[3, 4])[3].row_id == 5
    assert not list(path.parent.glob(".*tmp"))  # no temp file left behind


def test_plan_applies_what_fits_and_counts_every_skip(caplog):
    rows = [10, 11, 12, 13, 14]
    labels = ["0", "1", "1", "", "2"]
    planned = corrections.plan(
        [
            Correction(10, "0", "relabel", "1"),  # applied
            Correction(11, "1", "drop"),  # applied
            Correction(12, "1", "keep"),  # recorded, nothing to do
            Correction(14, "0", "relabel", "1"),  # label changed since review: skipped
            Correction(13, "", "relabel", "7"),  # 7 is no class: skipped
            Correction(99, "1", "drop"),  # no such row: skipped
        ],
        rows,
        labels,
        classes=["0", "1", "2"],
    )
    assert planned.relabel == {0: "1"}
    assert planned.drop == [1]
    assert planned.applied == 2
    assert dict(planned.counts) == {"relabel": 1, "drop": 1, "keep": 1, "skipped": 3}
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 3
    assert any("row 99" in line and "no such row" in line for line in skips)
    assert any("'7' is not a class" in line for line in skips)
    assert any("now '2', not the '0' reviewed" in line for line in skips)
