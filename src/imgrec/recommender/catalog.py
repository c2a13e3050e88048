"""The recommender's catalog (data/embeddings): one embedding per prepared image.

Layout (written by `save_catalog`, read by `load_catalog`; nothing else touches it):
  embeddings.npy  float32 (N, D), L2-normalised `forward_features`: what is searched
  appearance.npy  float32 (N, C), L2-normalised `forward_appearance`: what novelty is judged on
  row_ids.npy     int64 (N,), the prepared dataset's row ids, in its order
  meta.json       the md5 of the checkpoint that made them (so staleness is exact), and
                  the "no close match" threshold calibrated on the training data
                  (`embed.no_close_match_threshold`)
"""

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from imgrec.data.prepared import load_prepared
from imgrec.errors import ImgrecError, MissingOutput
from imgrec.files import atomic_dir, read_json, write_json
from imgrec.recommender.neighbors import ExactIndex

# The catalog records how its threshold was calibrated (`embed.no_close_match_threshold`).
NOVELTY_QUANTILE = 0.01


@dataclass(frozen=True)
class Catalog:
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    appearance: np.ndarray  # (N, C) float32, L2-normalised
    row_ids: np.ndarray  # (N,) int64, sorted
    labels: np.ndarray  # (N,) int64 class ids
    class_names: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    val_index: np.ndarray
    model_md5: str  # of the checkpoint file that made the embeddings
    no_close_match_below: float  # appearance cosine; see `embed`

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Positions in the catalog arrays of the given row ids."""
        return np.searchsorted(self.row_ids, row_ids)

    # Fitted once per catalog: a fit reads and copies the whole matrix (0.3 s at 40,000 items
    # on 2 cores), which a server would otherwise pay on every query. Searching a kept index
    # gives the bits a fresh one gives.
    @cached_property
    def embedding_index(self) -> ExactIndex:
        """The exact index over `embeddings`: what a query's top-k is searched in."""
        return ExactIndex().fit(self.embeddings)

    @cached_property
    def appearance_index(self) -> ExactIndex:
        return ExactIndex().fit(self.appearance)

    def closest_appearance(self, appearance: np.ndarray) -> np.ndarray:
        """(Q,) each query's appearance cosine to its nearest catalog item."""
        return self.appearance_index.search(appearance, 1)[0][:, 0]


def save_catalog(
    folder: str | os.PathLike,
    embeddings: np.ndarray,
    appearance: np.ndarray,
    row_ids: np.ndarray,
    model_md5: str,
    no_close_match_below: float,
) -> None:
    with atomic_dir(folder) as tmp:
        np.save(tmp / "embeddings.npy", embeddings)
        np.save(tmp / "appearance.npy", appearance)
        np.save(tmp / "row_ids.npy", row_ids)
        meta = {
            "model_md5": model_md5,
            "no_close_match_below": no_close_match_below,
            "calibration": f"quantile {NOVELTY_QUANTILE} of each validation image's "
            "appearance cosine to its nearest training image",
        }
        write_json(tmp / "meta.json", meta)


def load_catalog(
    embeddings_dir: str | os.PathLike, prepared_dir: str | os.PathLike, mapped: bool = True
) -> Catalog:
    """The catalog; `mapped` False reads every array into memory and the images one at a
    time (`prepared.ImageRows`), so files rewritten in place cannot crash a server."""
    embeddings_dir = Path(embeddings_dir)
    if not (embeddings_dir / "meta.json").exists():
        raise MissingOutput(f"no catalog in {embeddings_dir}; run `dvc repro` to make it.")
    prepared = load_prepared(prepared_dir, mapped)
    mmap_mode = "r" if mapped else None
    try:
        row_ids = np.load(embeddings_dir / "row_ids.npy")
    except (OSError, ValueError) as error:
        raise ImgrecError(f"the catalog in {embeddings_dir} has no readable row ids ({error}); "
                          "run `dvc repro` to remake it.") from error  # fmt: skip
    if tuple(prepared.images.shape) != (len(prepared.row_ids), *[prepared.img_size] * 2, 3):
        raise ImgrecError(
            f"the images in {prepared_dir} are not one per row id at its image size; run "
            "`dvc repro` to remake them."
        )
    if not np.array_equal(row_ids, prepared.row_ids):
        raise ImgrecError(
            f"the embeddings in {embeddings_dir} do not match the images in {prepared_dir}; "
            "run `dvc repro` to bring them in step."
        )
    try:
        meta = read_json(embeddings_dir / "meta.json")
        return Catalog(
            embeddings=np.load(embeddings_dir / "embeddings.npy", mmap_mode=mmap_mode),
            appearance=np.load(embeddings_dir / "appearance.npy", mmap_mode=mmap_mode),
            row_ids=row_ids,
            labels=prepared.labels,
            class_names=prepared.class_names,
            images=prepared.images,
            val_index=prepared.val_index,
            model_md5=meta["model_md5"],
            no_close_match_below=meta["no_close_match_below"],
        )
    except (OSError, KeyError, ValueError) as error:
        raise ImgrecError(
            f"the catalog in {embeddings_dir} is incomplete or from an older imgrec ({error}); "
            "run `dvc repro` to remake it."
        ) from error
