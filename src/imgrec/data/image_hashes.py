"""The prepared images' hashes (data/image_hashes.parquet), one row per prepared image in
its order: `row_id`; its `duplicates.Fingerprint` as `pixel_hash` (16 bytes), `phash`
(uint64), `colour` (3 float32, mean RGB) and `thumbnail` (256 bytes, grey 16x16); and
`duplicate_group` (the row id of the first image of its duplicate group, which every
member is a verified copy of; its own row id when it has no duplicate). The file's
metadata holds `near_duplicate_bits`, the cut the groups were made with.

Written by prepare beside data/prepared rather than inside it: the model's provenance is
the prepared folder's md5, and a catalog's hashes are no part of what a model saw.
Written by `save_image_hashes`, read by `load_image_hashes`.
"""

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgrec.data.duplicates import THUMBNAIL_SIDE, Fingerprint
from imgrec.errors import ImgrecError, MissingOutput
from imgrec.files import atomic_file


@dataclass(frozen=True)
class ImageHashes:
    row_ids: np.ndarray  # (N,) int64, sorted
    fingerprints: list[Fingerprint]  # (N,)
    duplicate_groups: np.ndarray  # (N,) int64 row ids
    near_duplicate_bits: int  # how many phash bits apart near-duplicates may be


def save_image_hashes(path: str | os.PathLike, hashes: ImageHashes) -> None:
    table = pa.table(
        {
            "row_id": pa.array(hashes.row_ids, pa.int64()),
            "pixel_hash": pa.array([f.pixel_hash for f in hashes.fingerprints], pa.binary(16)),
            "phash": pa.array([f.phash for f in hashes.fingerprints], pa.uint64()),
            "colour": pa.array([f.colour for f in hashes.fingerprints], pa.list_(pa.float32(), 3)),
            "thumbnail": pa.array(
                [f.thumbnail for f in hashes.fingerprints], pa.binary(THUMBNAIL_SIDE**2)
            ),
            "duplicate_group": pa.array(hashes.duplicate_groups, pa.int64()),
        },
        metadata={"near_duplicate_bits": str(hashes.near_duplicate_bits)},
    )
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def load_image_hashes(path: str | os.PathLike) -> ImageHashes:
    if not os.path.exists(path):
        raise MissingOutput(f"no image hashes at {path}; run `dvc repro prepare` to make them.")
    try:
        table = pq.read_table(path)
        fingerprints = zip(
            table.column("pixel_hash").to_pylist(),
            table.column("phash").to_pylist(),
            (tuple(c) for c in table.column("colour").to_pylist()),
            table.column("thumbnail").to_pylist(),
            strict=True,
        )
        return ImageHashes(
            row_ids=table.column("row_id").to_numpy(),
            fingerprints=[Fingerprint(*f) for f in fingerprints],
            duplicate_groups=table.column("duplicate_group").to_numpy(),
            near_duplicate_bits=int(table.schema.metadata[b"near_duplicate_bits"]),
        )
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as error:
        raise ImgrecError(
            f"the image hashes {path} are unreadable or from an older imgrec ({error}); "
            "run `dvc repro prepare` to remake them."
        ) from error
