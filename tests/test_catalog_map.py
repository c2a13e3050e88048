"""The catalog map on a tiny catalog of two well-apart classes: the same map for the same
seed, classes apart on it, coordinates round-tripping through their file, the figure."""

import numpy as np
import pytest

from imgrec.data.prepared import UNLABELED
from imgrec.errors import ImgrecError
from imgrec.recommender.audit_report import AuditReport, DuplicateGroup, Leak, Outlier, SuspectLabel
from imgrec.recommender.catalog import Catalog
from imgrec.recommender.catalog_map import CatalogMapConfig, catalog_map, flag_rows, map_figure
from imgrec.recommender.map_coordinates import (
    MapCoordinates,
    load_coordinates,
    normalized,
    save_coordinates,
)
from imgrec.recommender.plotting import save_figure

PER_CLASS = 40


@pytest.fixture(scope="module")
def catalog():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 32))
    labels = np.repeat([0, 1], PER_CLASS)
    vectors = centres[labels] + 0.3 * rng.normal(size=(len(labels), 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    labels[-1] = UNLABELED
    return Catalog(
        embeddings=vectors, appearance=vectors, row_ids=np.arange(len(labels)) * 3,
        labels=labels, class_names=["a", "b"], images=np.zeros((len(labels), 2, 2, 3), np.uint8),
        val_index=np.arange(5), model_md5="0" * 32, no_close_match_below=0.5,
    )  # fmt: skip


@pytest.fixture(scope="module")
def mapped(catalog):
    return catalog_map(catalog, CatalogMapConfig(seed=3, num_threads=2))


def test_the_map_is_the_same_for_a_seed_and_keeps_the_classes_apart(catalog, mapped):
    again = catalog_map(catalog, CatalogMapConfig(seed=3, num_threads=2))
    assert again.xy.tobytes() == mapped.xy.tobytes()
    assert np.array_equal(mapped.row_ids, catalog.row_ids)
    assert mapped.xy.min() >= 0 and mapped.xy.max() <= 1
    centre_a, centre_b = (mapped.xy[:PER_CLASS].mean(0), mapped.xy[PER_CLASS:-1].mean(0))
    spread = max(mapped.xy[:PER_CLASS].std(0).max(), mapped.xy[PER_CLASS:-1].std(0).max())
    assert np.linalg.norm(centre_a - centre_b) > 3 * spread


def test_coordinates_round_trip_sorted_with_four_decimals(tmp_path):
    coordinates = MapCoordinates(np.array([7, 2, 30]), normalized([[0, 0], [2, 1], [4, 0]]))
    save_coordinates(tmp_path / "map.csv", coordinates)
    text = (tmp_path / "map.csv").read_text()
    # x spans 0..1; y, a quarter as tall, is centred: 0.375..0.625.
    assert text == "row_id,x,y\n2,0.5000,0.6250\n7,0.0000,0.3750\n30,1.0000,0.3750\n"
    loaded = load_coordinates(tmp_path / "map.csv")
    assert loaded.row_ids.tolist() == [2, 7, 30]
    assert loaded.xy.tolist() == [[0.5, 0.625], [0.0, 0.375], [1.0, 0.375]]


def test_a_broken_coordinates_file_is_one_sentence(tmp_path):
    (tmp_path / "map.csv").write_text("row_id,x,y\n1,0.5\n")
    with pytest.raises(ImgrecError, match="unreadable"):
        load_coordinates(tmp_path / "map.csv")


def test_the_figure_marks_every_kind_of_finding(catalog, mapped, tmp_path):
    report = AuditReport(
        duplicates=[DuplicateGroup((0, 3), "exact", 1.0)],
        leaks=[Leak(0, 9, 0.99)],
        suspect_labels=[SuspectLabel(6, "a", "b", 0.8)],
        outliers=[Outlier(12, 0.4), Outlier(999, 0.3)],  # 999: not on this map
    )
    assert {k: v.tolist() for k, v in flag_rows(report).items()} == {
        "duplicate": [0, 3], "leak": [0, 9], "suspect": [6], "outlier": [12, 999],
    }  # fmt: skip
    figure = map_figure(mapped, catalog.labels, catalog.class_names, report)
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["a", "b", "duplicate (2)", "leak (2)", "suspect (1)", "outlier (1)"]
    save_figure(figure, tmp_path / "map.png")
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
