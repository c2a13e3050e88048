"""The audit on a catalog built here, with known row ids: planted copies (one across the
split), a flipped label and an odd one out, in a vector space where alike pictures are
alike vectors (the images' own pixels, downsampled), so every answer is known."""

import numpy as np
import pytest

from imgrec.data import duplicates
from imgrec.data.image_hashes import ImageHashes
from imgrec.errors import ImgrecError
from imgrec.recommender.audit import (
    AuditConfig,
    audit,
    check_gates,
    copy_similarity_threshold,
    duplicates_figure,
    embedding_groups,
    mostly_suspect,
    suspect_labels_figure,
)
from imgrec.recommender.audit_report import (
    FLAGS,
    AuditReport,
    DuplicateGroup,
    Leak,
    Outlier,
    SuspectLabel,
    load_report,
    save_report,
)
from imgrec.recommender.catalog import Catalog
from imgrec.recommender.plotting import save_figure

SIZE = 32
PER_CLASS = 30
EXACT_COPY, OF_ITEM = 60, 7  # row 60 is row 7's pixels; 7 in train, 60 in validation
FLIPPED = 12  # a class-0 picture labelled 1
ODD = 61  # a picture like no other


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """Unit vectors of 8x8 mean-pooled, centred pixels: a vector space in which alike
    pictures are alike vectors."""
    pooled = images.reshape(len(images), 8, SIZE // 8, 8, SIZE // 8, 3).mean(axis=(2, 4))
    flat = pooled.reshape(len(images), -1) - 127.5
    return (flat / np.linalg.norm(flat, axis=1, keepdims=True)).astype(np.float32)


def picture(rng: np.random.Generator, label: int) -> np.ndarray:
    """Class 0: a bright square top left; class 1: bottom right; smooth noise around."""
    base = rng.normal(110, 12, (8, 8, 3)).repeat(SIZE // 8, 0).repeat(SIZE // 8, 1)
    lo, hi = (2, 14) if label == 0 else (18, 30)
    base[lo:hi, lo:hi] += 110
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def built():
    rng = np.random.default_rng(0)
    labels = np.array([0] * PER_CLASS + [1] * PER_CLASS + [0, 0])
    images = np.stack([picture(rng, label) for label in labels])
    images[EXACT_COPY] = images[OF_ITEM]
    labels[EXACT_COPY] = labels[OF_ITEM]
    checkers = np.indices((SIZE, SIZE)).sum(axis=0) // 8 % 2 * 255  # (S, S)
    images[ODD] = checkers[..., None].repeat(3, axis=2)
    labels[FLIPPED] = 1
    vectors = pixel_vectors(images)
    val_index = np.array([3, 40, 45, EXACT_COPY])
    catalog = Catalog(
        embeddings=vectors, appearance=vectors, row_ids=np.arange(len(labels)), labels=labels,
        class_names=["top-left", "bottom-right"], images=images, val_index=val_index,
        model_md5="0" * 32, no_close_match_below=0.5,
    )  # fmt: skip
    prints = [duplicates.fingerprint(image) for image in images]
    groups, _ = duplicates.duplicate_groups(prints, max_bits=4)
    hashes = ImageHashes(catalog.row_ids, prints, catalog.row_ids[groups], 4)
    copy_cosine = copy_similarity_threshold(catalog, pixel_vectors)
    report, neighbors = audit(catalog, hashes, copy_cosine, AuditConfig(audit_neighbors=5))
    return catalog, report, neighbors


def test_the_copy_is_one_exact_group_and_a_leak(built):
    _, report, _ = built
    assert [(g.row_ids, g.kind) for g in report.duplicates] == [((OF_ITEM, EXACT_COPY), "exact")]
    assert report.duplicates[0].similarity == 1.0
    (leak,) = report.leaks
    assert (leak.train_row_id, leak.val_row_id) == (OF_ITEM, EXACT_COPY)


def test_the_model_grows_a_hash_group_only_by_copies_of_its_first_item():
    """Items 0-1 a hash group; 1 and 2 each other's nearest and as alike as a copy, but 2
    is no copy of 0: 2 stays out (no chain). 3 and 4 mutual copies: a group of their own;
    5's nearest is 4, but 4's is 3: 5 stays out."""
    angles = np.radians([0, 10, 20, 90, 92, 94])  # unit vectors in a plane
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    hash_groups = np.array([0, 0, 2, 3, 4, 5])
    nearest = np.array([1, 2, 1, 4, 3, 4])
    nearest_cosine = (vectors * vectors[nearest]).sum(axis=1)
    cut = float(np.cos(np.radians(12)))  # 10 degrees is a copy, 20 is not
    groups = embedding_groups(vectors, hash_groups, nearest, nearest_cosine, cut)
    assert groups.tolist() == [0, 0, 2, 3, 3, 5]
    assert duplicates.group_sizes(groups) == (4, 2)
    assert duplicates.group_sizes(np.arange(5)) == (0, 0)  # no group: none is the largest


def test_the_flipped_label_is_the_most_suspect_with_its_true_label_suggested(built):
    _, report, _ = built
    top = report.suspect_labels[0]
    assert (top.row_id, top.label, top.suggested) == (FLIPPED, "bottom-right", "top-left")
    assert top.score > 0.5
    scores = [s.score for s in report.suspect_labels]
    assert scores == sorted(scores, reverse=True)


def test_the_odd_picture_is_the_outlier(built):
    _, report, _ = built
    assert [o.row_id for o in report.outliers] == [ODD]


def test_thresholds_say_how_they_were_calibrated(built):
    _, report, _ = built
    assert 0 < report.thresholds["near_duplicate_cosine"] <= 1
    assert "quantile" in report.thresholds["near_duplicate_calibration"]


def test_report_round_trips_in_the_documented_shape(built, tmp_path):
    catalog, report, _neighbors = built
    save_report(tmp_path / "audit.json", report)
    assert load_report(tmp_path / "audit.json") == report
    import json

    data = json.loads((tmp_path / "audit.json").read_text())
    assert set(data) == {"duplicates", "leaks", "suspect_labels", "outliers", "thresholds"}
    assert set(data["duplicates"][0]) == {"row_ids", "kind", "similarity"}
    assert set(data["leaks"][0]) == {"train_row_id", "val_row_id", "similarity"}
    assert set(data["suspect_labels"][0]) == {"row_id", "label", "suggested", "score"}
    assert set(data["outliers"][0]) == {"row_id", "score"}
    groups = report.duplicate_groups(catalog.row_ids)
    assert groups[OF_ITEM] == groups[EXACT_COPY] and len(set(groups.tolist())) == 61
    flags = report.flags(EXACT_COPY)
    assert flags.duplicates == (OF_ITEM,) and flags.leaks_with == (OF_ITEM,)


def test_figures_draw_with_findings_and_without(built, tmp_path):
    catalog, report, neighbors = built
    save_figure(duplicates_figure(report, catalog), tmp_path / "d.png")
    save_figure(suspect_labels_figure(report, catalog, neighbors), tmp_path / "s.png")
    save_figure(duplicates_figure(AuditReport(), catalog), tmp_path / "none.png")
    save_figure(suspect_labels_figure(AuditReport(), catalog, neighbors), tmp_path / "none2.png")
    for name in ("d.png", "s.png", "none.png", "none2.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize(("suspects", "says"), [(0, False), (45, False), (46, True), (69, True)])
def test_a_mostly_suspect_catalog_blames_the_model_not_the_labels(suspects, says):
    report = AuditReport(suspect_labels=[SuspectLabel(i, "1", "2", 0.9) for i in range(suspects)])
    line = mostly_suspect(report, 90)
    assert (line is not None) == says
    if says:
        assert f"{suspects} of 90 labels suspect" in line and "did not learn" in line


def test_gates_are_off_by_default_and_fail_with_the_count_and_the_limit(built):
    catalog, report, _ = built
    n = len(catalog.labels)
    check_gates(report, n, AuditConfig())  # off: a leak and suspects pass
    check_gates(report, n, AuditConfig(max_split_leaks=1, max_suspect_fraction=1.0))
    with pytest.raises(
        ImgrecError, match=r"^audit gate: 1 split leaks, more than max_split_leaks=0"
    ):
        check_gates(report, n, AuditConfig(max_split_leaks=0))
    suspects = len(report.suspect_labels)
    with pytest.raises(ImgrecError, match=rf"{suspects} suspect labels in {n} labelled items"):
        check_gates(report, n, AuditConfig(max_suspect_fraction=0.0))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_split_leaks": -2}, "max_split_leaks must be >= -1"),
        ({"max_suspect_fraction": -0.5}, "between 0 and 1, or -1"),
        ({"max_suspect_fraction": 1.5}, "max_suspect_fraction must be <= 1"),
    ],
)
def test_a_gate_out_of_range_is_one_sentence(params, message):
    with pytest.raises(ImgrecError, match=message):
        AuditConfig(**params)


def test_flagged_rows_names_each_flagged_row_once_per_kind_in_report_order():
    report = AuditReport(
        duplicates=[DuplicateGroup((7, 3), "exact", 1.0)],
        leaks=[Leak(3, 9, 0.99), Leak(3, 11, 0.98)],  # row 3 leaks twice: named once
        suspect_labels=[SuspectLabel(6, "a", "b", 0.8)],
        outliers=[Outlier(12, 0.4)],
    )
    assert report.flagged_rows() == {
        "suspect_label": [6], "duplicate": [7, 3], "outlier": [12], "leak": [3, 9, 11],
    }  # fmt: skip
    assert list(report.flagged_rows()) == list(FLAGS)
