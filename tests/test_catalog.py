"""The catalog: its own save/load pair, and the 'no close match' threshold calibrated on it."""

import json

import numpy as np
import pytest
from conftest import make_parquet, tagged_images

from imgrec.data.prepare import PrepareConfig, prepare
from imgrec.data.prepared import load_prepared
from imgrec.errors import ImgrecError
from imgrec.recommender.catalog import NOVELTY_QUANTILE, load_catalog, save_catalog
from imgrec.recommender.embed import no_close_match_threshold
from imgrec.recommender.neighbors import ExactIndex


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def prepared(tmp_path, dask_scheduler):
    parquet = make_parquet(tmp_path / "raw.parquet", tagged_images(40), [0, 1] * 20)
    (tmp_path / "prepared").mkdir()
    config = PrepareConfig(
        img_size=4, val_fraction=0.25, seed=0, max_bad_fraction=0.0, dask_scheduler=dask_scheduler
    )
    prepare(parquet, tmp_path / "prepared", config)
    return tmp_path / "prepared"


def test_threshold_is_the_quantile_of_validation_images_nearest_training_image(rng):
    appearance = unit(np.abs(rng.normal(size=(300, 16))))
    train, val = np.arange(0, 300, 2), np.arange(1, 300, 2)
    expected = np.quantile((appearance[val] @ appearance[train].T).max(axis=1), NOVELTY_QUANTILE)
    assert no_close_match_threshold(appearance, train, val) == pytest.approx(expected, abs=1e-6)


def test_a_far_query_falls_below_and_a_catalog_item_does_not(prepared, tmp_path, rng):
    data = load_prepared(prepared)
    n = len(data.row_ids)
    appearance = unit(1.0 + 0.1 * np.abs(rng.normal(size=(n, 8))))  # a tight cloud
    threshold = no_close_match_threshold(appearance, data.train_index, data.val_index)
    embeddings = unit(rng.normal(size=(n, 4)))
    save_catalog(tmp_path / "catalog", embeddings, appearance, data.row_ids, "md5", threshold)
    catalog = load_catalog(tmp_path / "catalog", prepared)
    far = unit(np.eye(8)[:1])  # one channel only: unlike the cloud
    closest = catalog.closest_appearance(np.concatenate([far, appearance[:1]]))
    assert closest[0] < catalog.no_close_match_below <= closest[1]
    assert closest[1] == pytest.approx(1.0)
    meta = json.loads((tmp_path / "catalog" / "meta.json").read_text())
    assert meta["model_md5"] == "md5" and "quantile 0.01" in meta["calibration"]
    assert meta["no_close_match_below"] == threshold


def test_an_incomplete_catalog_is_one_sentence(prepared, tmp_path, rng):
    data = load_prepared(prepared)
    n = len(data.row_ids)
    folder = tmp_path / "catalog"
    vectors = unit(rng.normal(size=(n, 4)))
    save_catalog(folder, vectors, unit(rng.random((n, 4))), data.row_ids, "x", 0.5)
    (folder / "appearance.npy").unlink()
    with pytest.raises(ImgrecError, match=r"incomplete or from an older imgrec.*dvc repro"):
        load_catalog(folder, prepared)


def test_the_kept_indexes_search_as_fresh_ones_do(prepared, tmp_path, rng):
    data = load_prepared(prepared)
    n = len(data.row_ids)
    embeddings, appearance = unit(np.abs(rng.normal(size=(n, 6)))), unit(rng.random((n, 4)))
    save_catalog(tmp_path / "catalog", embeddings, appearance, data.row_ids, "md5", 0.5)
    catalog = load_catalog(tmp_path / "catalog", prepared)
    queries = unit(np.abs(rng.normal(size=(5, 6))))
    for _ in range(2):  # the second search uses the index the first one fitted
        scores, positions = catalog.embedding_index.search(queries, 3)
        fresh_scores, fresh_positions = ExactIndex().fit(embeddings).search(queries, 3)
        np.testing.assert_array_equal(scores, fresh_scores)
        np.testing.assert_array_equal(positions, fresh_positions)
    assert catalog.embedding_index is catalog.embedding_index
    closest = ExactIndex().fit(appearance).search(appearance[:3], 1)[0][:, 0]
    np.testing.assert_array_equal(catalog.closest_appearance(appearance[:3]), closest)
