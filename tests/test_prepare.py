"""prepare, class_ids, stratified_split and load_prepared on tiny parquet files."""

import math
import re

import numpy as np
import pytest
from conftest import hf_metadata, make_parquet, png_bytes, tagged_image

from imgrec.data.corrections import Correction
from imgrec.data.prepare import (
    SKIP_REASONS,
    PrepareConfig,
    class_ids,
    has_label,
    prepare,
    stratified_split,
)
from imgrec.data.prepared import load_prepared
from imgrec.errors import ImgrecError

IMG_SIZE = 4


def _grey(value: int) -> bytes:
    return tagged_image(value, IMG_SIZE)


def _prepare(parquet, out, reviewed=(), **overrides):
    """prepare with test-sized params; `overrides` are PrepareConfig fields."""
    settings = {"img_size": IMG_SIZE, "val_fraction": 0.25, "seed": 0, "max_bad_fraction": 0.5}
    out.mkdir(exist_ok=True)
    counts, _ = prepare(parquet, out, PrepareConfig(**(settings | overrides)), reviewed)
    return counts


@pytest.fixture
def dirty_parquet(tmp_path):
    """16 good rows (grey level = 10 * row, labels alternate 0/1) with 8 bad rows among them."""
    images, labels, null_structs = [], [], []
    bad = {
        2: ("truncated", png_bytes((16, 16))[:50], 0),
        5: ("garbage", b"\x00\x01not an image\xff" * 3, 1),
        9: ("null bytes", None, 0),
        12: ("null struct", _grey(1), 1),
        17: ("null label", _grey(2), None),
        19: ("HF ClassLabel 'no label'", _grey(3), -1),
        20: ("hostile bytes: EPS", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", 0),
        22: ("hostile bytes: DDS", b"DDS |" + b"\x00" * 120, 1),
    }
    good_rows = []
    for row in range(24):
        if row in bad:
            _, data, label = bad[row]
            if row == 12:
                null_structs.append(row)
        else:
            data, label = _grey(10 * row), len(good_rows) % 2
            good_rows.append(row)
        images.append(data)
        labels.append(label)
    path = make_parquet(
        tmp_path / "raw.parquet", images, labels, row_group_size=4, null_images=null_structs
    )
    return path, good_rows


def test_prepare_skips_and_counts_bad_rows(dirty_parquet, tmp_path, dask_scheduler):
    parquet, good_rows = dirty_parquet
    out = tmp_path / "prepared"
    counts = _prepare(parquet, out, dask_scheduler=dask_scheduler)
    assert counts["rows_read"] == 24
    assert counts["rows_skipped"] == 8
    assert counts["images"] == 16
    assert counts["skipped_by_reason"] == {
        "null_image": 2,
        "undecodable": 4,
        "too_large": 0,
        "unlabeled": 2,
    }
    assert counts["classes"] == 2
    assert counts["train_images"] + counts["val_images"] == 16

    prepared = load_prepared(out)
    assert prepared.row_ids.tolist() == good_rows
    assert prepared.images.shape == (16, IMG_SIZE, IMG_SIZE, 3)
    assert prepared.images.dtype == np.uint8
    # Each kept image is the one from its row (grey level 10 * row), in order.
    assert prepared.images[:, 0, 0, 0].tolist() == [10 * row for row in good_rows]
    assert prepared.labels.tolist() == [index % 2 for index in range(16)]
    assert prepared.img_size == IMG_SIZE
    assert prepared.class_names == ["0", "1"]
    assert not (out / "staging.npy").exists()


def test_nan_labels_are_unlabeled(tmp_path, dask_scheduler):
    parquet = make_parquet(
        tmp_path / "raw.parquet",
        [_grey(v) for v in (10, 20, 30, 40, 50)],
        [0.0, math.nan, 1.0, 0.0, 1.0],
    )
    counts = _prepare(
        parquet, tmp_path / "prepared", val_fraction=0.5, dask_scheduler=dask_scheduler
    )
    assert counts["skipped_by_reason"]["unlabeled"] == 1
    assert load_prepared(tmp_path / "prepared").row_ids.tolist() == [0, 2, 3, 4]


@pytest.mark.parametrize(
    ("label", "usable"),
    [
        (0, True),
        (7, True),
        ("cat", True),
        (2.0, True),
        (None, False),
        (math.nan, False),
        (-1, False),
    ],
)
def test_has_label(label, usable):
    assert has_label(label) is usable


def test_prepare_too_many_bad_rows_raises(dirty_parquet, tmp_path, dask_scheduler):
    parquet, _ = dirty_parquet
    with pytest.raises(ImgrecError, match=r"max_bad_fraction=0\.1") as info:
        _prepare(
            parquet, tmp_path / "prepared", max_bad_fraction=0.1, dask_scheduler=dask_scheduler
        )
    assert "8 of 24 rows" in str(info.value)


def test_prepare_all_bad_rows_raises(tmp_path, dask_scheduler):
    parquet = make_parquet(tmp_path / "raw.parquet", [b"junk", b"more junk"], [0, 1])
    with pytest.raises(ImgrecError, match="no row"):
        _prepare(
            parquet, tmp_path / "prepared", max_bad_fraction=1.0, dask_scheduler=dask_scheduler
        )


def test_prepare_clean_data_keeps_every_row(tmp_path, dask_scheduler):
    parquet = make_parquet(tmp_path / "raw.parquet", [_grey(i) for i in range(8)], [0, 1] * 4)
    out = tmp_path / "prepared"
    counts = _prepare(parquet, out, max_bad_fraction=0.0, dask_scheduler=dask_scheduler)
    assert counts["rows_skipped"] == 0
    assert counts["skipped_by_reason"] == dict.fromkeys(SKIP_REASONS, 0)
    assert load_prepared(out).row_ids.tolist() == list(range(8))


def test_prepare_gives_the_same_bytes_on_any_scheduler(dirty_parquet, tmp_path, dask_scheduler):
    """The default local cluster (one worker per core) and a running 2-worker one."""
    parquet, _ = dirty_parquet
    outs = [tmp_path / "local", tmp_path / "cluster"]
    for out, scheduler in zip(outs, ["local", dask_scheduler], strict=True):
        _prepare(parquet, out, dask_scheduler=scheduler)
    for name in ("images.npy", "labels.npy", "row_ids.npy", "train_index.npy", "val_index.npy"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert (outs[0] / "meta.json").read_text() == (outs[1] / "meta.json").read_text()


def test_prepare_non_contiguous_int_labels(tmp_path, dask_scheduler):
    raw = [42, 3, 7, 3, 42, 7, 7, 3, 42]
    parquet = make_parquet(tmp_path / "raw.parquet", [_grey(i) for i in range(9)], raw)
    out = tmp_path / "prepared"
    _prepare(parquet, out, val_fraction=0.34, dask_scheduler=dask_scheduler)
    prepared = load_prepared(out)
    assert prepared.class_names == ["3", "7", "42"]
    assert prepared.labels.tolist() == [{3: 0, 7: 1, 42: 2}[label] for label in raw]


def test_prepare_uses_classlabel_names(tmp_path, dask_scheduler):
    names = ["airplane", "bird", "cat"]
    raw = [0, 2, 0, 2, 0, 2]  # "bird" never appears
    parquet = make_parquet(
        tmp_path / "raw.parquet", [_grey(i) for i in range(6)], raw, metadata=hf_metadata(names)
    )
    out = tmp_path / "prepared"
    _prepare(parquet, out, val_fraction=0.34, dask_scheduler=dask_scheduler)
    prepared = load_prepared(out)
    assert prepared.class_names == ["airplane", "cat"]
    assert prepared.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_prepare_string_labels_map_to_sorted_ids(tmp_path, dask_scheduler):
    raw = ["dog", "cat", "bird", "dog", "cat", "bird"]
    parquet = make_parquet(tmp_path / "raw.parquet", [_grey(i) for i in range(6)], raw)
    out = tmp_path / "prepared"
    _prepare(parquet, out, val_fraction=0.5, dask_scheduler=dask_scheduler)
    prepared = load_prepared(out)
    assert prepared.class_names == ["bird", "cat", "dog"]
    assert prepared.labels.tolist() == [2, 1, 0, 2, 1, 0]


def test_prepare_single_example_class_goes_to_train(tmp_path, dask_scheduler):
    raw = [0, 1] * 5 + [2]
    parquet = make_parquet(tmp_path / "raw.parquet", [_grey(i) for i in range(11)], raw)
    out = tmp_path / "prepared"
    counts = _prepare(parquet, out, val_fraction=0.2, dask_scheduler=dask_scheduler)
    prepared = load_prepared(out)
    assert counts["classes"] == 3
    assert 10 in prepared.train_index.tolist()
    assert 10 not in prepared.val_index.tolist()
    assert sorted([*prepared.train_index, *prepared.val_index]) == list(range(11))


@pytest.mark.parametrize(
    ("labels", "names", "expected_ids", "expected_names"),
    [
        ([3, 7, 42, 7], None, [0, 1, 2, 1], ["3", "7", "42"]),
        ([1, 0, 1], ["no", "yes"], [1, 0, 1], ["no", "yes"]),
        ([5, 0], ["a", "b"], [1, 0], ["a", "5"]),  # out of the names' range: the value itself
        (["b", "a", "c"], ["x", "y", "z"], [1, 0, 2], ["a", "b", "c"]),  # names are for ints
        ([], None, [], []),
    ],
)
def test_class_ids(labels, names, expected_ids, expected_names):
    ids, class_names = class_ids(labels, names)
    assert ids.dtype == np.int64
    assert ids.tolist() == expected_ids
    assert class_names == expected_names


@pytest.fixture
def split_labels():
    # 3 classes of 40, 20 and 10 images, shuffled.
    labels = np.repeat([0, 1, 2], [40, 20, 10])
    return np.random.default_rng(1).permutation(labels)


def test_stratified_split_is_deterministic_disjoint_and_complete(split_labels):
    train, val = stratified_split(split_labels, 0.2, seed=3)
    again_train, again_val = stratified_split(split_labels, 0.2, seed=3)
    assert np.array_equal(train, again_train)
    assert np.array_equal(val, again_val)
    assert not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(len(split_labels)))
    assert train.dtype == val.dtype == np.int64
    assert np.all(np.diff(train) > 0)  # sorted
    assert np.all(np.diff(val) > 0)


def test_stratified_split_depends_on_seed(split_labels):
    _, val_a = stratified_split(split_labels, 0.2, seed=3)
    _, val_b = stratified_split(split_labels, 0.2, seed=4)
    assert not np.array_equal(val_a, val_b)


def test_stratified_split_is_stratified(split_labels):
    _, val = stratified_split(split_labels, 0.2, seed=0)
    assert len(val) == 14
    assert np.bincount(split_labels[val], minlength=3).tolist() == [8, 4, 2]


@pytest.mark.parametrize(
    ("labels", "val_fraction"),
    [
        (np.repeat([0, 1, 2], 10), 0.01),  # 1 validation image for 3 classes
        (np.repeat([0, 1, 2], 10), 0.95),  # 2 train images left for 3 classes
        (np.array([0, 1, 2]), 0.5),  # every class has a single image: nothing to validate on
    ],
)
def test_stratified_split_too_small_raises(labels, val_fraction):
    with pytest.raises(ImgrecError, match=re.escape(f"val_fraction={val_fraction} ")):
        stratified_split(labels, val_fraction, seed=0)


def test_load_prepared_empty_folder_raises(tmp_path):
    with pytest.raises(ImgrecError, match="no prepared dataset"):
        load_prepared(tmp_path)


def test_prepare_applies_corrections_and_counts_what_it_skips(tmp_path, dask_scheduler, caplog):
    names = ["cat", "dog", "fox"]
    raw = [0, 1, 0, 1, 0, 1, 0, 1, 2, 2]
    parquet = make_parquet(
        tmp_path / "raw.parquet", [_grey(i) for i in range(10)], raw, metadata=hf_metadata(names)
    )
    reviewed = [
        Correction(2, "cat", "relabel", "dog"),
        Correction(3, "dog", "drop"),
        Correction(4, "cat", "keep"),
        Correction(5, "cat", "relabel", "fox"),  # row 5 is a dog: stale, skipped
        Correction(6, "cat", "relabel", "cow"),  # no such class: skipped
        Correction(99, "cat", "drop"),  # no such row: skipped
    ]
    out = tmp_path / "prepared"
    counts = _prepare(parquet, out, reviewed, val_fraction=0.3, dask_scheduler=dask_scheduler)
    prepared = load_prepared(out)
    assert prepared.row_ids.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    by_row = dict(zip(prepared.row_ids.tolist(), prepared.labels.tolist(), strict=True))
    assert prepared.class_names == names
    assert [by_row[row] for row in (2, 4, 5, 6)] == [1, 0, 1, 0]  # only row 2 changed
    assert counts["corrections"]["applied"] == 2
    assert counts["corrections"]["skipped"] == 3
    assert (counts["corrections"]["relabel"], counts["corrections"]["drop"]) == (1, 1)
    assert len(counts["corrections"]["skipped_why"]) == 3
    assert sum("skipped" in record.getMessage() for record in caplog.records) == 3
    split = np.concatenate([prepared.train_index, prepared.val_index])
    assert sorted(split.tolist()) == list(range(9))  # the dropped row is in neither side
