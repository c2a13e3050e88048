"""Nearest-neighbour search over L2-normalised embeddings, with scikit-learn's habits.

`ExactIndex` is a blocked matrix product: memory is block x N, never N x N.
For catalogs of millions, FAISS: `HnswIndex` (a graph) and `IvfIndex` (k-means cells).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from imgrec.config import StageConfig, param
from imgrec.errors import ImgrecError

_BLOCK_ROWS = 1024  # queries per block: 1024 x 40k float32 scores is 160 MB


def _top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest scores, best first; ties broken by the lower index."""
    n = scores.shape[1]
    # torch.topk selects on all of torch's threads with no negated copy: ~5x numpy's
    # argpartition on 2 cores.
    values, indices = torch.topk(torch.from_numpy(scores), min(k + 1, n), dim=1)
    values, indices = values.numpy(), indices.numpy()
    part_scores, part = values[:, :k].copy(), indices[:, :k].copy()
    # topk picks arbitrarily among items tied with the k-th score (duplicate images do tie).
    # A tie crosses the cut exactly when the (k+1)-th score equals the k-th; in those rows
    # take the tied items with the lowest indices instead.
    crossing = np.flatnonzero(values[:, k] == values[:, k - 1]) if k < n else ()
    for row in crossing:
        kth_score = values[row, k - 1]
        above = np.flatnonzero(scores[row] > kth_score)
        tied = np.flatnonzero(scores[row] == kth_score)[: k - len(above)]
        part[row] = np.concatenate((above, tied))
        part_scores[row] = scores[row, part[row]]
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def _check_catalog_k(k: int, n_items: int) -> None:
    """Each item's neighbours are the other n_items - 1 items."""
    if not 0 < k < n_items:
        raise ImgrecError(
            f"param top_k must be between 1 and {n_items - 1} (catalog size - 1), got {k}."
        )


class ExactIndex:
    """Exact cosine top-k by blocked inner products (inputs must be L2-normalised)."""

    def __init__(self, block_rows: int = _BLOCK_ROWS):
        self.block_rows = block_rows

    def fit(self, embeddings: np.ndarray) -> ExactIndex:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        # Embeddings come out of a ReLU: many dimensions are zero for every catalog item
        # (about half for a trained model here). They add nothing to any inner product with
        # the catalog, so leaving them out is exact and halves the bytes every search reads.
        self.active_dims_ = np.flatnonzero(embeddings.any(axis=0))
        self.embeddings_ = np.ascontiguousarray(embeddings[:, self.active_dims_])
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (Q, k), best first."""
        n = len(self.embeddings_)
        if not 0 < k <= n:
            raise ImgrecError(f"top_k must be between 1 and the catalog size {n}, got {k}.")
        queries = np.ascontiguousarray(np.asarray(queries, np.float32)[:, self.active_dims_])
        scores_out = np.empty((len(queries), k), np.float32)
        index_out = np.empty((len(queries), k), np.int64)
        for start in range(0, len(queries), self.block_rows):
            block = queries[start : start + self.block_rows] @ self.embeddings_.T  # (b, N)
            scores_out[start : start + len(block)], index_out[start : start + len(block)] = (
                _top_k_rows(block, k)
            )
        return scores_out, index_out

    def search_catalog(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for every catalog item against the others (self excluded)."""
        n = len(self.embeddings_)
        _check_catalog_k(k, n)
        scores_out = np.empty((n, k), np.float32)
        index_out = np.empty((n, k), np.int64)
        for start in range(0, n, self.block_rows):
            stop = min(start + self.block_rows, n)
            block = self.embeddings_[start:stop] @ self.embeddings_.T  # (b, N)
            block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # never yourself
            scores_out[start:stop], index_out[start:stop] = _top_k_rows(block, k)
        return scores_out, index_out


def load_faiss():
    """FAISS, imported quietly: its loader logs each SIMD build it tries and misses."""
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as error:
        raise ImgrecError("faiss is missing: pip install faiss-cpu.") from error
    return faiss


class FaissIndex:
    """What the FAISS indexes share: inner product on unit vectors, positions as ids, the
    catalog searched against itself, and one sentence where FAISS pads results with -1."""

    def _build(self, embeddings: np.ndarray):
        """The FAISS index over `embeddings`, trained if it needs training, items not added."""
        raise NotImplementedError

    def _set_search_params(self) -> None:
        """Copy the search-time params onto the FAISS index: they may change after fit."""
        raise NotImplementedError

    def _too_few_advice(self) -> str:
        """What to change when a search finds fewer than k items."""
        raise NotImplementedError

    def fit(self, embeddings: np.ndarray) -> FaissIndex:
        # Kept (not copied when already float32) for search_catalog: reconstructing the
        # items from FAISS would copy them all, 2 GB at 1,000,000 x 512.
        self.embeddings_ = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.index_ = self._build(self.embeddings_)
        self.index_.add(self.embeddings_)
        self.n_items_ = len(self.embeddings_)
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (Q, k), best first."""
        if not 0 < k <= self.n_items_:
            raise ImgrecError(
                f"top_k must be between 1 and the catalog size {self.n_items_}, got {k}."
            )
        self._set_search_params()
        scores, indices = self.index_.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        if (indices < 0).any():  # FAISS pads with -1 where it found fewer than k items
            raise ImgrecError(
                f"the index found fewer than {k} neighbours for some items; "
                f"{self._too_few_advice()} or use index=exact."
            )
        return scores, indices.astype(np.int64)

    def search_catalog(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for every catalog item against the others (self excluded)."""
        _check_catalog_k(k, self.n_items_)
        scores, indices = self.search(self.embeddings_, k + 1)
        # Drop each item's own entry (or the last one, when the search missed it).
        own = indices == np.arange(self.n_items_)[:, None]
        own[~own.any(axis=1), -1] = True
        keep = ~own
        return scores[keep].reshape(-1, k), indices[keep].reshape(-1, k)


class HnswIndex(FaissIndex):
    """Approximate cosine top-k with a FAISS HNSW graph."""

    def __init__(
        self, hnsw_m: int = 32, hnsw_ef_construction: int = 200, hnsw_ef_search: int = 128
    ):
        self.hnsw_m = hnsw_m  # graph neighbours per node
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search

    def _build(self, embeddings: np.ndarray):
        faiss = load_faiss()
        index = faiss.IndexHNSWFlat(embeddings.shape[1], self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.hnsw_ef_construction
        return index

    def _set_search_params(self) -> None:
        self.index_.hnsw.efSearch = self.hnsw_ef_search

    def _too_few_advice(self) -> str:
        return f"raise param hnsw_ef_search (now {self.hnsw_ef_search})"


# FAISS's k-means warns below 39 training points per centroid; the catalog caps the lists.
_MIN_POINTS_PER_LIST = 39


class IvfIndex(FaissIndex):
    """Approximate cosine top-k with a FAISS inverted file (IVF-Flat): k-means cells, each
    query scanning exactly the items of its `ivf_nprobe` nearest cells."""

    def __init__(
        self,
        ivf_nlist: int = 0,
        ivf_nprobe: int = 32,
        train_points_per_list: int = 64,
        kmeans_iterations: int = 10,
        seed: int = 0,
    ):
        self.ivf_nlist = ivf_nlist  # 0: about 4 sqrt(N), as many as the catalog can train
        self.ivf_nprobe = ivf_nprobe
        self.train_points_per_list = train_points_per_list  # k-means sample, not the index
        self.kmeans_iterations = kmeans_iterations
        self.seed = seed

    def _build(self, embeddings: np.ndarray):
        faiss = load_faiss()
        n, dim = embeddings.shape
        wanted = self.ivf_nlist or round(4 * np.sqrt(n))
        self.nlist_ = max(1, min(wanted, n // _MIN_POINTS_PER_LIST))
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(dim), dim, self.nlist_, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed, index.cp.niter = self.seed, self.kmeans_iterations
        index.cp.spherical = True  # unit centroids: cells by cosine, as the items are scored
        index.cp.max_points_per_centroid = self.train_points_per_list  # a seeded sample
        # A catalog under 39 items gets one list (exact search); k-means must not warn there.
        index.cp.min_points_per_centroid = min(_MIN_POINTS_PER_LIST, n // self.nlist_)
        index.train(embeddings)
        return index

    def _set_search_params(self) -> None:
        self.index_.nprobe = min(self.ivf_nprobe, self.nlist_)

    def _too_few_advice(self) -> str:
        return f"raise param ivf_nprobe (now {self.ivf_nprobe})"


@dataclass(frozen=True)
class IndexConfig(StageConfig):
    """Which index a stage searches the catalog with (recommend, audit)."""

    index: Literal["exact", "hnsw", "ivf"] = "exact"
    hnsw_m: int = param(32, ge=1)
    hnsw_ef_construction: int = param(200, ge=1)
    hnsw_ef_search: int = param(128, ge=1)
    ivf_nlist: int = param(0, ge=0)  # 0: about 4 sqrt(N), capped by what the catalog trains
    ivf_nprobe: int = param(32, ge=1)
    # numpy's matrix products score the catalog: the BLAS kernels change the last bits.
    kernels: Literal["portable", "native"] = "portable"


def make_index(config: IndexConfig) -> ExactIndex | HnswIndex | IvfIndex:
    """`exact` (default), or for millions of items approximate `hnsw` (a graph) or `ivf`
    (k-means cells)."""
    if config.index == "hnsw":
        return HnswIndex(config.hnsw_m, config.hnsw_ef_construction, config.hnsw_ef_search)
    if config.index == "ivf":
        return IvfIndex(config.ivf_nlist, config.ivf_nprobe)
    return ExactIndex()
