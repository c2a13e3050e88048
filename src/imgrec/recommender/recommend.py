"""Stage recommend: each catalog item's top-k most similar items, and how often they share
its label (precision@k, mAP@k). The indexes themselves are `neighbors`."""

from dataclasses import dataclass

import numpy as np

from imgrec.config import param
from imgrec.data.prepared import UNLABELED
from imgrec.recommender.neighbors import IndexConfig


@dataclass(frozen=True)
class RecommendConfig(IndexConfig):
    top_k: int = param(5, ge=1)
    # A top-k lists no duplicate of its query, and no two duplicates of each other (the
    # audit's groups); false shows them.
    collapse_duplicates: bool = True
    # The exact search's products run on BLAS threads, whose count changes the scores' bits.
    num_threads: int = param(2, ge=1)


def retrieval_metrics(neighbor_labels: np.ndarray, labels: np.ndarray) -> dict:
    """precision@k and mAP@k by label agreement, for every catalog item against the others.

    `labels` (N,): the catalog's; `neighbor_labels` (N, k): those of each item's top-k
    (self excluded, as `search_catalog` gives them). Only labelled items are judged, and an
    unlabeled neighbour shares no label (None for both when no item has a label).
    precision@k: share of the k neighbours that carry the item's label.
    AP@k: sum of precision@i over the ranks i holding such a neighbour, divided by
    min(k, how many other items carry the label), the most that could be found (0 when
    none can); mAP@k averages it over items.
    """
    labelled = labels != UNLABELED
    if not labelled.any():
        return {"precision@k": None, "map@k": None}
    labels, neighbor_labels = labels[labelled], neighbor_labels[labelled]
    relevant = neighbor_labels == labels[:, None]  # (N, k)
    k = relevant.shape[1]
    precision_at_rank = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    findable = np.minimum(k, np.bincount(labels)[labels] - 1)  # others with the label
    average_precision = np.where(
        findable > 0, (precision_at_rank * relevant).sum(axis=1) / np.maximum(findable, 1), 0.0
    )
    return {"precision@k": float(relevant.mean()), "map@k": float(average_precision.mean())}
