"""The recommender's catalog: embeddings from embed beside labels and images from prepare."""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgrec.dataset import load_prepared
from imgrec.errors import ImgrecError


@dataclass(frozen=True)
class Catalog:
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    row_ids: np.ndarray  # (N,) int64, sorted
    labels: np.ndarray  # (N,) int64 class ids
    class_names: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    val_index: np.ndarray

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Positions in the catalog arrays of the given row ids."""
        return np.searchsorted(self.row_ids, row_ids)


def load_catalog(embeddings_dir: str | os.PathLike, prepared_dir: str | os.PathLike) -> Catalog:
    embeddings_dir = Path(embeddings_dir)
    if not (embeddings_dir / "embeddings.npy").exists():
        raise ImgrecError(
            f"no catalog embeddings in {embeddings_dir}; run `dvc repro` (or `dvc pull`) first."
        )
    prepared = load_prepared(prepared_dir)
    row_ids = np.load(embeddings_dir / "row_ids.npy")
    if not np.array_equal(row_ids, prepared.row_ids):
        raise ImgrecError(
            f"the embeddings in {embeddings_dir} do not match the images in {prepared_dir}; "
            "run `dvc repro` to bring them in step."
        )
    return Catalog(
        embeddings=np.load(embeddings_dir / "embeddings.npy", mmap_mode="r"),
        row_ids=row_ids,
        labels=prepared.labels,
        class_names=prepared.class_names,
        images=prepared.images,
        val_index=prepared.val_index,
    )
