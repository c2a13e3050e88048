"""Nearest-neighbour search over L2-normalised embeddings, with scikit-learn's habits.

`ExactIndex` is a blocked matrix product: memory is block x N, never N x N.
`FaissIndex` wraps an HNSW graph from FAISS for catalogs of millions.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from imgrec.config import StageConfig, param
from imgrec.errors import ImgrecError

_BLOCK_ROWS = 1024  # queries per block: 1024 x 40k float32 scores is 160 MB


@dataclass(frozen=True)
class RecommendConfig(StageConfig):
    top_k: int = param(5, ge=1)
    index: Literal["exact", "faiss"] = "exact"
    hnsw_m: int = param(32, ge=1)
    hnsw_ef_construction: int = param(200, ge=1)
    hnsw_ef_search: int = param(128, ge=1)
    # numpy's matrix products score the catalog: the BLAS kernels change the last bits.
    kernels: Literal["portable", "native"] = "portable"


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

    def fit(self, embeddings: np.ndarray) -> "ExactIndex":
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


class FaissIndex:
    """Approximate cosine top-k with a FAISS HNSW graph (inner product on unit vectors)."""

    def __init__(
        self, hnsw_m: int = 32, hnsw_ef_construction: int = 200, hnsw_ef_search: int = 128
    ):
        self.hnsw_m = hnsw_m  # graph neighbours per node
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search

    def fit(self, embeddings: np.ndarray) -> "FaissIndex":
        try:
            import faiss
        except ImportError as error:
            raise ImgrecError("param index=faiss needs faiss: pip install faiss-cpu.") from error
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.IndexHNSWFlat(embeddings.shape[1], self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.hnsw_ef_construction
        index.hnsw.efSearch = self.hnsw_ef_search
        index.add(embeddings)
        self.index_, self.n_items_ = index, len(embeddings)
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 < k <= self.n_items_:
            raise ImgrecError(
                f"top_k must be between 1 and the catalog size {self.n_items_}, got {k}."
            )
        scores, indices = self.index_.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        if (indices < 0).any():  # FAISS pads with -1 where the graph walk found fewer than k
            raise ImgrecError(
                f"the HNSW graph found fewer than {k} neighbours for some items; raise "
                f"param hnsw_ef_search (now {self.hnsw_ef_search}) or use index=exact."
            )
        return scores, indices.astype(np.int64)

    def search_catalog(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_catalog_k(k, self.n_items_)
        embeddings = self.index_.reconstruct_n(0, self.n_items_)
        scores, indices = self.search(embeddings, k + 1)
        # Drop each item's own entry (or the last one, when the graph missed it).
        own = indices == np.arange(self.n_items_)[:, None]
        own[~own.any(axis=1), -1] = True
        keep = ~own
        return scores[keep].reshape(-1, k), indices[keep].reshape(-1, k)


def make_index(config: RecommendConfig) -> ExactIndex | FaissIndex:
    """`exact` (default) or `faiss` (an approximate HNSW graph, for millions of items)."""
    if config.index == "exact":
        return ExactIndex()
    return FaissIndex(config.hnsw_m, config.hnsw_ef_construction, config.hnsw_ef_search)


def retrieval_metrics(neighbor_labels: np.ndarray, labels: np.ndarray) -> dict:
    """precision@k and mAP@k by label agreement, for every catalog item against the others.

    `labels` (N,): the catalog's; `neighbor_labels` (N, k): those of each item's top-k
    (self excluded, as `search_catalog` gives them).
    precision@k: share of the k neighbours that carry the item's label.
    AP@k: sum of precision@i over the ranks i holding such a neighbour, divided by
    min(k, how many other items carry the label), the most that could be found (0 when
    none can); mAP@k averages it over items.
    """
    relevant = neighbor_labels == labels[:, None]  # (N, k)
    k = relevant.shape[1]
    precision_at_rank = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    findable = np.minimum(k, np.bincount(labels)[labels] - 1)  # others with the label
    average_precision = np.where(
        findable > 0, (precision_at_rank * relevant).sum(axis=1) / np.maximum(findable, 1), 0.0
    )
    return {"precision@k": float(relevant.mean()), "map@k": float(average_precision.mean())}
