"""Catalog vectors kept between embed runs (.imgrec/vectors), so a grown catalog embeds only
its new images.

DVC deletes data/embeddings before embed runs, so the vectors embed already made live
where DVC does not look: one folder per `VectorKey` (the model file's md5, the code and
libraries that turn pixels into vectors, where they are computed), each holding one
vector pair per image, found by the blake2b hash of its decoded pixels
(`duplicates.pixel_hash`). A vector is only ever taken from the folder of the exact key a
fresh computation would have, so a kept vector is the bits embed would compute again
(tests/test_embed.py compares a grown catalog with one embedded from scratch).

Bounded and cleaned: after each run a folder holds exactly the images of that run (what
left the catalog is dropped), and only the KEPT_KEYS most recently used folders stay (the
model before the last one is forgotten). Deleting `.imgrec/vectors` is always safe: the
next run embeds everything. An unreadable folder is ignored, with one line, and rewritten.

Layout of a folder (`save_kept`, `load_kept`; nothing else touches it):
  pixel_hashes.npy  uint8 (N, 16), sorted by bytes
  embeddings.npy    float32 (N, D)   the `inference.catalog_vectors` pair of each image,
  appearance.npy    float32 (N, C)   as a full batch gives it (`embed.embed_catalog`)
  key.json          the key, in words (what made these vectors)
"""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from imgrec.errors import first_line
from imgrec.files import atomic_dir, read_json, write_json
from imgrec.pipeline import kernels

log = logging.getLogger(__name__)

KEPT_KEYS = 2  # the current model's vectors and the one before's (`dvc exp` back and forth)
# The package modules that turn pixels into vectors: an edit to any of them is a new key.
VECTOR_CODE = (
    "recommender/embed.py",
    "training/inference.py",
    "pipeline/kernels.py",
    "training/model.py",
)  # under src/imgrec/; hashed by their file names, as when they sat side by side


@dataclass(frozen=True)
class VectorKey:
    """Everything that decides a kept vector's bits besides the image's pixels."""

    model_md5: str
    code_md5: str
    libraries: str
    compute: str  # device and threads; with native kernels, the CPU too

    @classmethod
    def here(cls, model_md5: str, device: torch.device, kernels_mode: str) -> "VectorKey":
        package = Path(__file__).parents[1]
        digest = hashlib.md5()
        for name in VECTOR_CODE:
            digest.update(Path(name).name.encode())
            digest.update((package / name).read_bytes())
        compute = f"device {device}, {torch.get_num_threads()} threads, {kernels_mode} kernels"
        if device.type == "cuda":  # another GPU or cuDNN computes other bits
            compute += (
                f"; {torch.cuda.get_device_name(device)}, cuDNN {torch.backends.cudnn.version()}"
            )
        if kernels_mode == "native":
            compute += f"; {kernels.machine_line()}"
        libraries = f"torch {torch.__version__}, numpy {np.__version__}"
        return cls(model_md5, digest.hexdigest(), libraries, compute)

    @property
    def folder_name(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{self.model_md5[:12]}-{hashlib.md5(text).hexdigest()[:12]}"


@dataclass(frozen=True)
class KeptVectors:
    pixel_hashes: np.ndarray  # (N, 16) uint8, sorted by bytes
    embeddings: np.ndarray  # (N, D) float32
    appearance: np.ndarray  # (N, C) float32

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """(Q,) the position of each of `hashes` (Q, 16), or -1 where none is kept."""
        kept, wanted = _as_keys(self.pixel_hashes), _as_keys(hashes)
        positions = np.searchsorted(kept, wanted)
        found = positions < len(kept)
        found[found] = kept[positions[found]] == wanted[found]
        return np.where(found, positions, -1)


def _as_keys(hashes: np.ndarray) -> np.ndarray:
    """(N, 16) uint8 -> (N,) 16-byte strings that sort and compare as the bytes do."""
    return np.ascontiguousarray(hashes, dtype=np.uint8).view("S16").ravel()


def empty(embedding_dim: int, appearance_dim: int) -> KeptVectors:
    return KeptVectors(
        np.empty((0, 16), np.uint8),
        np.empty((0, embedding_dim), np.float32),
        np.empty((0, appearance_dim), np.float32),
    )


def first_of_each(hashes: np.ndarray) -> np.ndarray:
    """Positions of the first row of each distinct hash in `hashes` (N, 16), by hash bytes."""
    return np.unique(_as_keys(hashes), return_index=True)[1]


def kept_vectors(hashes: np.ndarray, embeddings: np.ndarray, appearance: np.ndarray) -> KeptVectors:
    """The vectors of images with pixel `hashes` (N, 16), one row per distinct image."""
    first = first_of_each(hashes)
    return KeptVectors(np.ascontiguousarray(hashes[first]), embeddings[first], appearance[first])


def load_kept(root: str | os.PathLike, key: VectorKey) -> KeptVectors | None:
    """The vectors kept under `key`, or None (nothing kept, or unreadable: one log line)."""
    folder = Path(root) / key.folder_name
    if not folder.exists():
        return None
    try:
        if read_json(folder / "key.json") != asdict(key):
            raise ValueError("its key.json names another model or code")
        kept = KeptVectors(
            np.load(folder / "pixel_hashes.npy"),
            np.load(folder / "embeddings.npy"),
            np.load(folder / "appearance.npy"),
        )
        if not len(kept.pixel_hashes) == len(kept.embeddings) == len(kept.appearance):
            raise ValueError("its arrays differ in length")
        os.utime(folder)  # recently used: the last to be cleaned
        return kept
    except Exception as error:  # a kept vector is a saving, never a reason to stop
        log.warning("ignoring the kept vectors in %s: %s", folder, first_line(error))
        return None


def save_kept(root: str | os.PathLike, key: VectorKey, kept: KeptVectors) -> None:
    """Keep `kept` under `key` (replacing what was there); forget all but the KEPT_KEYS most
    recently used keys' vectors. A failure (a full disk) is one log line: the next run
    embeds more, with the same result."""
    root = Path(root)
    try:
        with atomic_dir(root / key.folder_name) as tmp:
            np.save(tmp / "pixel_hashes.npy", kept.pixel_hashes)
            np.save(tmp / "embeddings.npy", kept.embeddings)
            np.save(tmp / "appearance.npy", kept.appearance)
            write_json(tmp / "key.json", asdict(key))
    except OSError as error:
        log.warning("could not keep the vectors in %s: %s", root, first_line(error))
        return
    folders = sorted(
        (f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")),
        key=lambda f: f.stat().st_mtime_ns,
        reverse=True,
    )
    for stale in folders[KEPT_KEYS:]:
        shutil.rmtree(stale, ignore_errors=True)


def union(*parts: KeptVectors) -> KeptVectors:
    """The vectors of every image in `parts`, once each."""
    return kept_vectors(
        np.concatenate([p.pixel_hashes for p in parts]),
        np.concatenate([p.embeddings for p in parts]),
        np.concatenate([p.appearance for p in parts]),
    )
