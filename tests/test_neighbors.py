"""Nearest-neighbour search: exact against brute force, HNSW and IVF against exact, metrics."""

import numpy as np
import pytest

from imgrec.errors import ImgrecError
from imgrec.recommender.neighbors import ExactIndex, HnswIndex, IvfIndex, make_index
from imgrec.recommender.recommend import RecommendConfig, retrieval_metrics


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
def hnsw_catalog() -> tuple[np.ndarray, np.ndarray]:
    pytest.importorskip("faiss")
    embeddings = unit_vectors(2000, 32, seed=2)
    _, exact = ExactIndex().fit(embeddings).search_catalog(10)
    _, approximate = HnswIndex().fit(embeddings).search_catalog(10)
    return exact, approximate


def test_hnsw_recall_against_exact(hnsw_catalog):
    exact, approximate = hnsw_catalog
    assert approximate.shape == exact.shape == (2000, 10)
    found = sum(len(np.intersect1d(a, e)) for a, e in zip(approximate, exact, strict=True))
    assert found / exact.size >= 0.9


def test_hnsw_search_catalog_never_returns_the_item_itself(hnsw_catalog):
    _, approximate = hnsw_catalog
    assert not (approximate == np.arange(2000)[:, None]).any()
    assert ((approximate >= 0) & (approximate < 2000)).all()


def test_hnsw_search_catalog_with_duplicates_excludes_self():
    pytest.importorskip("faiss")
    embeddings = np.repeat(unit_vectors(20, 8, seed=3), 3, axis=0)  # every vector three times
    scores, indices = HnswIndex().fit(embeddings).search_catalog(2)
    assert not (indices == np.arange(60)[:, None]).any()
    assert (indices // 3 == np.arange(60)[:, None] // 3).all()  # its two copies
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)


def test_hnsw_rejects_top_k_outside_catalog():
    pytest.importorskip("faiss")
    index = HnswIndex().fit(unit_vectors(10, 4))
    with pytest.raises(ImgrecError, match="top_k"):
        index.search_catalog(10)
    with pytest.raises(ImgrecError, match="top_k"):
        index.search(unit_vectors(1, 4), 11)


def test_make_index_follows_the_config():
    assert isinstance(make_index(RecommendConfig(index="exact")), ExactIndex)
    tuned = make_index(
        RecommendConfig(index="hnsw", hnsw_m=8, hnsw_ef_construction=20, hnsw_ef_search=16)
    )
    assert isinstance(tuned, HnswIndex)
    assert (tuned.hnsw_m, tuned.hnsw_ef_construction, tuned.hnsw_ef_search) == (8, 20, 16)
    ivf = make_index(RecommendConfig(index="ivf", ivf_nlist=7, ivf_nprobe=3))
    assert isinstance(ivf, IvfIndex) and (ivf.ivf_nlist, ivf.ivf_nprobe) == (7, 3)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("index", "annoy", "param index must be one of exact, hnsw, ivf; got 'annoy'"),
        ("index", "faiss", "param index must be one of exact, hnsw, ivf; got 'faiss'"),
        ("ivf_nlist", -1, "param ivf_nlist must be >= 0"),
        ("ivf_nprobe", 0, "param ivf_nprobe must be >= 1"),
        ("ivf_nprobe", 2.5, "param ivf_nprobe must be an integer"),
    ],
)
def test_config_rejects_bad_index_params(name, value, message):
    with pytest.raises(ImgrecError, match=message):
        RecommendConfig(**{name: value})


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


def test_hnsw_padding_is_one_sentence_not_a_wrong_neighbour():
    pytest.importorskip("faiss")
    index = HnswIndex().fit(unit_vectors(10, 4))

    class PaddedGraph:  # what FAISS returns when a graph walk finds fewer than k items
        def search(self, queries, k):
            indices = np.full((len(queries), k), -1)
            indices[:, 0] = 0
            return np.zeros((len(queries), k), np.float32), indices

    index.index_ = PaddedGraph()
    index._set_search_params = lambda: None
    with pytest.raises(ImgrecError, match=r"fewer than 3 neighbours.*hnsw_ef_search"):
        index.search(unit_vectors(2, 4), 3)


def clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Non-negative unit vectors around `clusters` centres, as ReLU embeddings of classes."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((clusters, dim)))
    noise = 0.5 * rng.standard_normal((n, dim))
    vectors = np.abs(centres[rng.integers(0, clusters, n)] + noise)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def ivf_catalog() -> tuple[np.ndarray, np.ndarray, IvfIndex]:
    pytest.importorskip("faiss")
    embeddings = clustered_unit_vectors(4000, 32, clusters=10, seed=5)
    _, exact = ExactIndex().fit(embeddings).search_catalog(10)
    index = IvfIndex(ivf_nprobe=8).fit(embeddings)
    return exact, index.search_catalog(10)[1], index


def test_ivf_recall_against_exact_on_clustered_vectors(ivf_catalog):
    exact, approximate, index = ivf_catalog
    assert index.nlist_ == 4000 // 39 == 102  # under 4 sqrt(4000) = 253: capped
    assert approximate.shape == exact.shape == (4000, 10)
    assert not (approximate == np.arange(4000)[:, None]).any()
    found = sum(len(np.intersect1d(a, e)) for a, e in zip(approximate, exact, strict=True))
    assert found / exact.size >= 0.9


def test_ivf_nprobe_applies_at_search_time(ivf_catalog):
    exact, _, index = ivf_catalog
    index.ivf_nprobe = index.nlist_  # every list: an exhaustive scan, so exact up to ties
    try:
        _, indices = index.search_catalog(10)
    finally:
        index.ivf_nprobe = 8
    assert (indices == exact).mean() >= 0.999


def test_ivf_fits_are_identical():
    pytest.importorskip("faiss")
    embeddings = clustered_unit_vectors(3000, 16, clusters=5, seed=6)
    first = IvfIndex(ivf_nprobe=2).fit(embeddings).search_catalog(5)
    second = IvfIndex(ivf_nprobe=2).fit(embeddings).search_catalog(5)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    other_seed = IvfIndex(ivf_nprobe=2, seed=1).fit(embeddings).search_catalog(5)
    assert not np.array_equal(first[1], other_seed[1])  # the seed does reach k-means


@pytest.mark.parametrize(
    ("n", "nlist", "expected"),
    [(1797, 0, 46), (1797, 20, 20), (1797, 500, 46), (20, 0, 1), (100_000, 0, 1265)],
)
def test_ivf_lists_are_capped_by_what_the_catalog_trains(n, nlist, expected, capfd):
    pytest.importorskip("faiss")
    index = IvfIndex(ivf_nlist=nlist, train_points_per_list=39, kmeans_iterations=2)
    index.fit(clustered_unit_vectors(n, 8, clusters=4))
    assert index.nlist_ == expected
    assert index.search_catalog(min(5, n - 1))[1].shape == (n, min(5, n - 1))
    assert "WARNING" not in capfd.readouterr().err  # FAISS: "please provide at least ..."


def test_ivf_padding_is_one_sentence_naming_nprobe():
    pytest.importorskip("faiss")
    # 40 items on each of two orthogonal axes, 2 lists, 1 probed: a query sees 40 items.
    embeddings = np.repeat(np.eye(2, dtype=np.float32), 40, axis=0)
    index = IvfIndex(ivf_nlist=2, ivf_nprobe=1).fit(embeddings)
    assert index.search(embeddings[:1], 40)[1].shape == (1, 40)
    with pytest.raises(ImgrecError, match=r"fewer than 41 neighbours.*ivf_nprobe \(now 1\)"):
        index.search(embeddings[:1], 41)
    index.ivf_nprobe = 2
    assert (index.search(embeddings[:1], 41)[1] >= 0).all()
