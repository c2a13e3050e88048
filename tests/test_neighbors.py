"""Nearest-neighbour search: exact against brute force, FAISS against exact, retrieval metrics."""

import numpy as np
import pytest

from imgrec.errors import ImgrecError
from imgrec.neighbors import (
    ExactIndex,
    FaissIndex,
    RecommendConfig,
    make_index,
    retrieval_metrics,
)


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def tied_unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors with four entries of 0.5 in 8 dims: every dot product is exact, many tie."""
    rng = np.random.default_rng(seed)
    vectors = np.zeros((n, 8), np.float32)
    for row in vectors:
        row[rng.choice(8, size=4, replace=False)] = 0.5
    return vectors


def brute_force_catalog(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full N x N scores, self excluded, sorted by score then by lower index."""
    n = len(embeddings)
    scores = embeddings @ embeddings.T
    np.fill_diagonal(scores, -np.inf)
    order = np.array([np.lexsort((np.arange(n), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize(
    "embeddings", [unit_vectors(120, 16), tied_unit_vectors(120)], ids=["random", "tied"]
)
@pytest.mark.parametrize("block_rows", [1024, 7])
def test_exact_search_catalog_equals_brute_force(embeddings, block_rows):
    scores, indices = ExactIndex(block_rows=block_rows).fit(embeddings).search_catalog(5)
    expected_scores, expected_indices = brute_force_catalog(embeddings, 5)
    assert indices.shape == scores.shape == (120, 5)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    assert not (indices == np.arange(120)[:, None]).any()


def test_ties_break_by_lower_index():
    # Items 1, 2 and 3 are identical, so every query scores them equally.
    embeddings = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [-1, 0]], np.float32)
    _, indices = ExactIndex().fit(embeddings).search_catalog(3)
    assert indices[0].tolist() == [1, 2, 3]
    assert indices[2].tolist() == [1, 3, 0]
    assert indices[4].tolist() == [1, 2, 3]


def test_block_rows_do_not_change_results():
    embeddings = unit_vectors(50, 8, seed=1)
    whole = ExactIndex().fit(embeddings).search_catalog(4)
    for block_rows in (1, 3, 49):
        blocked = ExactIndex(block_rows=block_rows).fit(embeddings).search_catalog(4)
        np.testing.assert_array_equal(blocked[1], whole[1])
        np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)


def test_search_finds_a_catalog_item_first():
    embeddings = unit_vectors(60, 16)
    index = ExactIndex(block_rows=4).fit(embeddings)
    scores, indices = index.search(embeddings[[3, 41, 59]], 4)
    assert indices[:, 0].tolist() == [3, 41, 59]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_dimensions_zero_for_every_item_are_left_out_exactly():
    # ReLU embeddings: dims 3..7 are zero across the catalog; a query may still use them.
    embeddings = np.abs(unit_vectors(40, 8, seed=3))
    embeddings[:, 3:] = 0
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    queries = unit_vectors(5, 8, seed=4)
    index = ExactIndex().fit(embeddings)
    assert index.active_dims_.tolist() == [0, 1, 2]
    scores, indices = index.search(queries, 6)
    full = queries @ embeddings.T
    np.testing.assert_allclose(scores, np.take_along_axis(full, indices, axis=1), atol=1e-6)
    np.testing.assert_array_equal(indices, np.argsort(-full, axis=1, kind="stable")[:, :6])
    catalog_scores, catalog_indices = index.search_catalog(4)
    expected_scores, expected_indices = brute_force_catalog(embeddings, 4)
    np.testing.assert_array_equal(catalog_indices, expected_indices)
    np.testing.assert_allclose(catalog_scores, expected_scores, atol=1e-6)


def test_tie_crossing_the_cut_in_a_larger_block():
    # Forty identical items: every query's top 5 cuts through the tie; lowest indices win.
    embeddings = np.tile(np.array([[0.6, 0.8]], np.float32), (40, 1))
    _, indices = ExactIndex().fit(embeddings).search_catalog(5)
    assert indices[0].tolist() == [1, 2, 3, 4, 5]
    assert indices[39].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("k", [0, 10, 11])
def test_search_catalog_rejects_top_k_outside_catalog(k):
    index = ExactIndex().fit(unit_vectors(10, 4))
    with pytest.raises(ImgrecError, match="top_k"):
        index.search_catalog(k)


def test_search_rejects_top_k_over_catalog_size():
    index = ExactIndex().fit(unit_vectors(10, 4))
    assert index.search(unit_vectors(2, 4), 10)[1].shape == (2, 10)
    with pytest.raises(ImgrecError, match="top_k"):
        index.search(unit_vectors(2, 4), 11)


@pytest.fixture(scope="module")
def faiss_catalog() -> tuple[np.ndarray, np.ndarray]:
    pytest.importorskip("faiss")
    embeddings = unit_vectors(2000, 32, seed=2)
    _, exact = ExactIndex().fit(embeddings).search_catalog(10)
    _, approximate = FaissIndex().fit(embeddings).search_catalog(10)
    return exact, approximate


def test_faiss_recall_against_exact(faiss_catalog):
    exact, approximate = faiss_catalog
    assert approximate.shape == exact.shape == (2000, 10)
    found = sum(len(np.intersect1d(a, e)) for a, e in zip(approximate, exact, strict=True))
    assert found / exact.size >= 0.9


def test_faiss_search_catalog_never_returns_the_item_itself(faiss_catalog):
    _, approximate = faiss_catalog
    assert not (approximate == np.arange(2000)[:, None]).any()
    assert ((approximate >= 0) & (approximate < 2000)).all()


def test_faiss_search_catalog_with_duplicates_excludes_self():
    pytest.importorskip("faiss")
    embeddings = np.repeat(unit_vectors(20, 8, seed=3), 3, axis=0)  # every vector three times
    scores, indices = FaissIndex().fit(embeddings).search_catalog(2)
    assert not (indices == np.arange(60)[:, None]).any()
    assert (indices // 3 == np.arange(60)[:, None] // 3).all()  # its two copies
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)


def test_faiss_rejects_top_k_outside_catalog():
    pytest.importorskip("faiss")
    index = FaissIndex().fit(unit_vectors(10, 4))
    with pytest.raises(ImgrecError, match="top_k"):
        index.search_catalog(10)
    with pytest.raises(ImgrecError, match="top_k"):
        index.search(unit_vectors(1, 4), 11)


def test_make_index_follows_the_config():
    assert isinstance(make_index(RecommendConfig(index="exact")), ExactIndex)
    tuned = make_index(
        RecommendConfig(index="faiss", hnsw_m=8, hnsw_ef_construction=20, hnsw_ef_search=16)
    )
    assert isinstance(tuned, FaissIndex)
    assert (tuned.hnsw_m, tuned.hnsw_ef_construction, tuned.hnsw_ef_search) == (8, 20, 16)
    with pytest.raises(ImgrecError, match="'annoy'"):
        RecommendConfig(index="annoy")


def test_retrieval_metrics_by_hand():
    # Catalog labels: five 1s, three 2s, one 3 (a class of one: nothing to find).
    labels = np.array([1, 1, 1, 1, 1, 2, 2, 2, 3])
    neighbor_labels = np.array(
        [
            [1, 2, 1],  # a 1: precision@3 2/3; AP = (1/1 + 2/3) / min(3, 4) = 5/9
            [1, 1, 1],  # a 1: 1; AP = 3 / 3 = 1
            [2, 2, 1],  # a 1: 1/3; AP = (1/3) / 3 = 1/9
            [1, 1, 1],
            [1, 1, 1],
            [2, 2, 1],  # a 2: 2/3; AP = (1 + 1) / min(3, 2) = 1
            [1, 2, 1],  # a 2: 1/3; AP = (1/2) / 2 = 1/4
            [2, 2, 1],  # a 2: 2/3; AP = 1
            [1, 2, 2],  # the 3: precision 0; AP 0 (nothing could be found)
        ]
    )
    metrics = retrieval_metrics(neighbor_labels, labels)
    precision = [2 / 3, 1, 1 / 3, 1, 1, 2 / 3, 1 / 3, 2 / 3, 0]
    average_precision = [5 / 9, 1, 1 / 9, 1, 1, 1, 1 / 4, 1, 0]
    assert metrics["precision@k"] == pytest.approx(np.mean(precision))
    assert metrics["map@k"] == pytest.approx(np.mean(average_precision))
    assert set(metrics) == {"precision@k", "map@k"}


def test_one_hit_at_rank_one_is_not_a_perfect_average_precision():
    labels = np.array([0] * 6 + [1] * 6)
    one_hit = np.array([[0, 1, 1, 1, 1]] * 6 + [[1, 1, 1, 1, 1]] * 6)
    assert retrieval_metrics(one_hit, labels)["map@k"] == pytest.approx((6 * 0.2 + 6 * 1) / 12)


def test_faiss_padding_is_one_sentence_not_a_wrong_neighbour():
    pytest.importorskip("faiss")
    index = FaissIndex().fit(unit_vectors(10, 4))

    class PaddedGraph:  # what FAISS returns when a graph walk finds fewer than k items
        def search(self, queries, k):
            indices = np.full((len(queries), k), -1)
            indices[:, 0] = 0
            return np.zeros((len(queries), k), np.float32), indices

    index.index_ = PaddedGraph()
    with pytest.raises(ImgrecError, match=r"fewer than 3 neighbours.*hnsw_ef_search"):
        index.search(unit_vectors(2, 4), 3)
