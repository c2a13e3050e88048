"""Stage embed: the catalog, each catalog image's embedding and appearance vectors, and the
"no close match" threshold, the model's, calibrated on its training data.

Incremental: a vector's bits are a function of the image, the model, and the size of the
batch it was computed in (oneDNN and BLAS pick kernels by shape; measured: not of its place
in the batch or the images beside it). A from-scratch pass puts every image in a full
batch of FULL_BATCH but the last N mod FULL_BATCH. So `embed_catalog` keeps full-batch
vectors (`kept_vectors`) by pixel hash, computes only images it has not kept, in full
batches padded with blank images, and computes the final partial batch again as a
from-scratch pass does: the catalog is the bytes a from-scratch pass writes
(tests/test_embed.py), whether 1 or all of its images are new.

Where that assumption fails (measured: CUDA with TF32 on an H200, where an image's vector
changes with its place in the batch), nothing can be kept: `embed_catalog` measures it on
every run (`batch_position_matters`: one full batch, forwards and reversed) and, where it
fails, embeds every image as a from-scratch pass does and keeps nothing.

Calibration: every validation image's appearance cosine to its nearest training
image; the threshold is the NOVELTY_QUANTILE of those. Validation images are what
new images drawn like the catalog's look like to a model that never trained on
them (training images sit closer together), so about that share of such new
images is flagged; a query whose nearest catalog item is less alike than the
threshold is "unlike the catalog". Its inputs are the model and its training data, so a
catalog that grows or changes never moves it.
"""

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from imgrec.config import ComputeConfig
from imgrec.data.duplicates import pixel_hash
from imgrec.recommender.catalog import NOVELTY_QUANTILE
from imgrec.recommender.kept_vectors import KeptVectors, empty, first_of_each, kept_vectors, union
from imgrec.recommender.neighbors import ExactIndex
from imgrec.training.inference import catalog_vectors
from imgrec.training.model import CNNClassifier

FULL_BATCH = 256  # images a forward pass takes at once


@dataclass(frozen=True)
class EmbedConfig(ComputeConfig):
    pass


@dataclass(frozen=True)
class Embedded:
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    appearance: np.ndarray  # (N, C) float32, L2-normalised
    # every image's full-batch vectors, to keep for the next run; None where an image's
    # vectors depend on its place in the batch (`batch_position_matters`)
    kept: KeptVectors | None
    new_images: int  # distinct images embedded here
    reused: int  # images whose vectors an earlier run kept
    final_batch: int  # images of the final partial batch, computed again as from scratch

    def summary(self, kept_place: str) -> str:
        """One line saying what was computed, what was reused, and what was computed twice."""
        total = len(self.embeddings)
        if self.kept is None:
            return (f"embedded all {total} images as one pass, keeping none: here an image's "
                    "vectors depend on its place in the batch (measured)")  # fmt: skip
        line = f"embedded {self.new_images} of {total} images"
        if copies := total - self.new_images - self.reused:
            line += f" ({copies} more are pixel copies of them)"
        if self.reused:
            line += f"; reused the vectors of {self.reused} from {kept_place}"
        else:
            line += f"; none were in {kept_place}"
        if self.final_batch == total and total:
            line += (f"; all {total} again as one unpadded batch (fewer than {FULL_BATCH}), "
                     "as a full pass computes them")  # fmt: skip
        elif self.final_batch:
            line += f"; the last {self.final_batch} again unpadded, as a full pass ends"
        return line


def pixel_hashes(images: np.ndarray) -> np.ndarray:
    """(N, 16) uint8: each (S, S, 3) image's `duplicates.pixel_hash`."""
    hashes = np.empty((len(images), 16), np.uint8)
    for i, image in enumerate(images):
        hashes[i] = np.frombuffer(pixel_hash(image), np.uint8)
    return hashes


def full_batch_vectors(
    model: CNNClassifier,
    images: np.ndarray,
    positions: np.ndarray,
    device: torch.device | str,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`catalog_vectors` of `images[positions]`, each computed in a full batch (padded with
    blank images): the bits it has anywhere but a final partial batch. A batch at a time
    is read from the memory-mapped images."""
    n = len(positions)
    embeddings = np.empty((n, model.config.embedding_dim), np.float32)
    appearance = np.empty((n, model.config.widths[-1]), np.float32)
    for start in tqdm(range(0, n, FULL_BATCH), desc=desc, unit="batch", disable=None):
        stop = min(start + FULL_BATCH, n)
        batch = np.zeros((FULL_BATCH, *images.shape[1:]), np.uint8)  # blank past the images
        batch[: stop - start] = images[positions[start:stop]]
        e, a = catalog_vectors(model, batch, batch_size=FULL_BATCH, device=device)
        embeddings[start:stop], appearance[start:stop] = e[: stop - start], a[: stop - start]
    return embeddings, appearance


def batch_position_matters(
    model: CNNClassifier, images: np.ndarray, device: torch.device | str
) -> bool:
    """Whether an image's vectors here depend on its place in the batch: one full batch of
    `images` (repeated to fill it) against the same batch reversed, bit for bit."""
    if not len(images):
        return False
    batch = np.asarray(images[np.arange(FULL_BATCH) % min(len(images), FULL_BATCH)])
    forwards = catalog_vectors(model, batch, batch_size=FULL_BATCH, device=device)
    backwards = catalog_vectors(model, batch[::-1], batch_size=FULL_BATCH, device=device)
    return not all(np.array_equal(f, b[::-1]) for f, b in zip(forwards, backwards, strict=True))


def embed_catalog(
    model: CNNClassifier,
    images: np.ndarray,
    kept: KeptVectors | None,
    device: torch.device | str,
    desc: str | None = None,
    *,
    position_matters: bool | None = None,
) -> Embedded:
    """`catalog_vectors(model, images)`'s bits, computing only the images `kept` lacks
    (and the final partial batch again); all of them, keeping none, where an image's
    vectors depend on its place in the batch (`position_matters`; None: measure it)."""
    if position_matters is None:
        position_matters = batch_position_matters(model, images, device)
    if position_matters:
        embeddings, appearance = catalog_vectors(
            model, images, batch_size=FULL_BATCH, device=device, desc=desc
        )
        return Embedded(embeddings, appearance, None, len(images), 0, len(images) % FULL_BATCH)
    config = model.config
    kept = kept or empty(config.embedding_dim, config.widths[-1])
    hashes = pixel_hashes(images)
    new_positions = np.flatnonzero(kept.find(hashes) < 0)
    reused = len(images) - len(new_positions)
    new_positions = new_positions[np.sort(first_of_each(hashes[new_positions]))]  # once each
    new_vectors = full_batch_vectors(model, images, new_positions, device, desc)
    both = union(kept, kept_vectors(hashes[new_positions], *new_vectors))
    at = both.find(hashes)
    embeddings, appearance = both.embeddings[at], both.appearance[at]  # full-batch bits
    this_run = kept_vectors(hashes, embeddings, appearance)  # copies: kept before the tail
    final = len(images) % FULL_BATCH
    if final:  # as a full pass ends: one batch of the last `final` images
        tail = np.asarray(images[len(images) - final :])
        embeddings[-final:], appearance[-final:] = catalog_vectors(
            model, tail, batch_size=FULL_BATCH, device=device
        )
    return Embedded(embeddings, appearance, this_run, len(new_positions), reused, final)


def no_close_match_threshold(
    appearance: np.ndarray, train_index: np.ndarray, val_index: np.ndarray
) -> float:
    """The NOVELTY_QUANTILE of each validation image's appearance cosine to its nearest
    training image."""
    nearest, _ = ExactIndex().fit(appearance[train_index]).search(appearance[val_index], 1)
    return float(np.quantile(nearest[:, 0], NOVELTY_QUANTILE))
