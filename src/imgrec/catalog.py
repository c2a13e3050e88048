"""The recommender's catalog (data/embeddings): one embedding per prepared image.

Layout (written by `save_catalog`, read by `load_catalog`; nothing else touches it):
  embeddings.npy  float32 (N, D), L2-normalised `forward_features` of each image
  row_ids.npy     int64 (N,), the prepared dataset's row ids, in its order
  meta.json       the md5 of the checkpoint that embedded them, so staleness is exact
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgrec.errors import ImgrecError
from imgrec.files import atomic_dir, read_json, write_json
from imgrec.prepared import load_prepared


@dataclass(frozen=True)
class Catalog:
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    row_ids: np.ndarray  # (N,) int64, sorted
    labels: np.ndarray  # (N,) int64 class ids
    class_names: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    val_index: np.ndarray
    model_md5: str  # of the checkpoint file that made the embeddings

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Positions in the catalog arrays of the given row ids."""
        return np.searchsorted(self.row_ids, row_ids)


def save_catalog(
    folder: str | os.PathLike, embeddings: np.ndarray, row_ids: np.ndarray, model_md5: str
) -> None:
    with atomic_dir(folder) as tmp:
        np.save(tmp / "embeddings.npy", embeddings)
        np.save(tmp / "row_ids.npy", row_ids)
        write_json(tmp / "meta.json", {"model_md5": model_md5})


def load_catalog(embeddings_dir: str | os.PathLike, prepared_dir: str | os.PathLike) -> Catalog:
    embeddings_dir = Path(embeddings_dir)
    if not (embeddings_dir / "meta.json").exists():
        raise ImgrecError(f"no catalog in {embeddings_dir}; run `dvc repro` to make it.")
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
        model_md5=read_json(embeddings_dir / "meta.json")["model_md5"],
    )
