"""The recommendations (data/recommendations.parquet): every item's top-k, best first.

One row per (row_id, rank): `row_id`, `rank` (1..k), `neighbor_row_id`, `score`
(cosine). Written by `save_recommendations`, read by `load_recommendations`.
"""

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgrec.files import atomic_file


@dataclass(frozen=True)
class Recommendations:
    row_ids: np.ndarray  # (N,) int64, sorted
    neighbor_row_ids: np.ndarray  # (N, k) int64, best first
    scores: np.ndarray  # (N, k) float32

    def of(self, row_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour row ids, scores) of one item, best first."""
        position = int(np.searchsorted(self.row_ids, row_id))
        if position == len(self.row_ids) or self.row_ids[position] != row_id:
            raise KeyError(row_id)
        return self.neighbor_row_ids[position], self.scores[position]


def save_recommendations(path: str | os.PathLike, recommendations: Recommendations) -> None:
    n, k = recommendations.neighbor_row_ids.shape
    table = pa.table(
        {
            "row_id": np.repeat(recommendations.row_ids, k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "neighbor_row_id": recommendations.neighbor_row_ids.ravel(),
            "score": recommendations.scores.ravel(),
        }
    )
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def load_recommendations(path: str | os.PathLike) -> Recommendations:
    table = pq.read_table(path).sort_by([("row_id", "ascending"), ("rank", "ascending")])
    row_ids = table.column("row_id").to_numpy()
    k = int(table.column("rank").to_numpy().max()) if len(row_ids) else 0
    return Recommendations(
        row_ids=row_ids[::k] if k else row_ids,
        neighbor_row_ids=table.column("neighbor_row_id").to_numpy().reshape(-1, k),
        scores=table.column("score").to_numpy().reshape(-1, k),
    )
