"""The prepared dataset (data/prepared): images decoded once into a memory-mappable array.

Layout (read by `load_prepared`; written by `prepare.prepare`, which streams the
pixels into IMAGES_FILE from its workers, then `save_prepared_labels` for the rest):
  images.npy      uint8 (N, S, S, 3), ready to memory-map
  labels.npy      int64 (N,) contiguous class ids; UNLABELED in a catalog's unlabeled rows
  row_ids.npy     int64 (N,) row of each image in the fetched parquet
  train_index.npy, val_index.npy   int64 positions into the arrays above (both empty for a
                  catalog apart from the training data: `prepare_catalog.prepare_catalog`)
  meta.json       class names and image size
"""

import hashlib
import os
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgrec.errors import ImgrecError, MissingOutput
from imgrec.files import read_json, write_json

IMAGES_FILE = "images.npy"  # written in place by prepare's workers, then moved here
UNLABELED = -1  # the label id of a catalog item without a label


def label_name(class_names: list[str], label: int) -> str | None:
    """A label id's class name; None for UNLABELED."""
    return None if label == UNLABELED else class_names[label]


class ImageRows:
    """(N, S, S, 3) uint8 images of an IMAGES_FILE, read an image at a time from a file
    opened once: what a long-lived process holds instead of a memory map, which a file
    rewritten in place (`cp other.npy images.npy`) turns into a SIGBUS. A file replaced
    by rename (DVC) leaves the open one as it was; one rewritten in place reads short or
    other pixels, never a crash."""

    def __init__(self, path: Path):
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # fmt: skip
            self.shape, fortran, self.dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran or len(self.shape) != 4:
            raise ImgrecError(f"{path} is not an (N, S, S, 3) array of images.")
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 - held while this object lives
        self.image_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        # Closed when the last reference goes (a reloaded-away server state, once its last
        # request is answered), or by close(): never under a reader that still holds it.
        self._finalizer = weakref.finalize(self, self.file.close)

    def close(self) -> None:
        self._finalizer()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, position: int) -> np.ndarray:
        if not -len(self) <= position < len(self):
            raise IndexError(f"image {position} of {len(self)}")
        position %= len(self)
        data = os.pread(self.file.fileno(), self.image_bytes,
                        self.offset + position * self.image_bytes)  # fmt: skip
        if len(data) < self.image_bytes:
            raise ImgrecError(f"{self.path} changed while it was read; run `dvc repro` again.")
        return np.frombuffer(data, self.dtype).reshape(self.shape[1:])


@dataclass(frozen=True)
class Prepared:
    # (N, S, S, 3) uint8, memory-mapped (or read row by row); None: loaded without images
    images: np.ndarray | ImageRows | None
    labels: np.ndarray  # (N,) int64
    row_ids: np.ndarray  # (N,) int64
    train_index: np.ndarray
    val_index: np.ndarray
    class_names: list[str]
    img_size: int

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Positions in the arrays above of the given row ids (row_ids is sorted)."""
        return np.searchsorted(self.row_ids, row_ids)


def load_prepared(folder: str | os.PathLike, mapped: bool = True, images: bool = True) -> Prepared:
    """The prepared dataset; its images memory-mapped, or, `mapped` False (a server that
    lives while the pipeline rewrites its files), read an image at a time (`ImageRows`);
    `images` False: the labels, row ids and split only (`images` is None, no file held)."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise MissingOutput(f"{folder} holds no prepared dataset; run `dvc repro prepare` first.")
    meta = read_json(folder / "meta.json")
    return Prepared(
        images=None
        if not images
        else np.load(folder / IMAGES_FILE, mmap_mode="r")
        if mapped
        else ImageRows(folder / IMAGES_FILE),
        labels=np.load(folder / "labels.npy"),
        row_ids=np.load(folder / "row_ids.npy"),
        train_index=np.load(folder / "train_index.npy"),
        val_index=np.load(folder / "val_index.npy"),
        class_names=meta["class_names"],
        img_size=meta["img_size"],
    )


def prepared_md5(folder: str | os.PathLike) -> str:
    """One md5 over every file of a prepared dataset, in name order: what a model saw."""
    digest = hashlib.md5()
    for file in sorted(Path(folder).iterdir()):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def save_prepared_labels(
    folder: str | os.PathLike,
    *,
    labels: np.ndarray,
    row_ids: np.ndarray,
    train_index: np.ndarray,
    val_index: np.ndarray,
    class_names: list[str],
    img_size: int,
) -> None:
    """Everything but the images, which prepare streams into `folder / IMAGES_FILE` itself."""
    folder = Path(folder)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "row_ids.npy", row_ids)
    np.save(folder / "train_index.npy", train_index)
    np.save(folder / "val_index.npy", val_index)
    write_json(folder / "meta.json", {"class_names": class_names, "img_size": img_size})


def link_prepared(source: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Fill the empty `folder` with the prepared dataset in `source`: hard links where the
    filesystem allows (no second copy of the pixels; nothing rewrites a prepared file in
    place), copies elsewhere."""
    for file in sorted(Path(source).iterdir()):
        try:
            os.link(file, Path(folder) / file.name)
        except OSError:
            shutil.copyfile(file, Path(folder) / file.name)
