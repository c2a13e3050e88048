"""prepare: decode every fetched image exactly once into the prepared arrays."""

import collections
import errno
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from imgrec.config import StageConfig, param
from imgrec.data import corrections, duplicates, images
from imgrec.data.duplicates import PHASH_BITS
from imgrec.data.image_hashes import ImageHashes
from imgrec.data.prepared import IMAGES_FILE, UNLABELED, save_prepared_labels
from imgrec.data.raw_parquet import class_names_from_metadata
from imgrec.errors import ImgrecError
from imgrec.pipeline.dask_cluster import LOCAL, dask_client, ordered_results

log = logging.getLogger(__name__)

SKIP_REASONS = (*images.SKIP_REASONS, "unlabeled")
_COMPACT_ROWS = 1024  # images copied at once when skipped rows are squeezed out


@dataclass(frozen=True)
class DecodeConfig(StageConfig):
    """How images are decoded and grouped: the training data's and the catalog's alike."""

    img_size: int = param(64, ge=1)
    max_bad_fraction: float = param(0.1, ge=0, le=1)
    # keep: duplicates stay, each group on one side of the split; drop: one image a group.
    duplicates: Literal["keep", "drop"] = "keep"
    # Most phash bits (of 64) two near-duplicates differ by: copies re-encoded, resized or
    # converted measured 0-6 at 64 px (README). Only the candidates: each is verified on
    # the pixels (`duplicates.verified`), so widening it never groups look-alikes.
    near_duplicate_bits: int = param(6, ge=0, le=PHASH_BITS)
    dask_scheduler: str = LOCAL  # where the decoding runs; the output is the same anywhere


@dataclass(frozen=True)
class PrepareConfig(DecodeConfig):
    val_fraction: float = param(0.2, gt=0, lt=1)
    seed: int = param(42, ge=0)


def class_ids(labels: list, label_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Map any label values (ints, gaps, strings) to contiguous ids 0..C-1 in sorted order;
    a missing label (a catalog's unlabeled row) to UNLABELED.

    Integer labels take their names from the dataset's ClassLabel names when
    it has them; otherwise a label's name is the label itself.
    """
    values = sorted({label for label in labels if has_label(label)})
    lookup = collections.defaultdict(lambda: UNLABELED, {v: i for i, v in enumerate(values)})
    ids = np.fromiter((lookup[value] for value in labels), dtype=np.int64, count=len(labels))
    return ids, [label_text(value, label_names) for value in values]


def label_text(value: object, label_names: list[str] | None) -> str:
    """A label value's class name: its ClassLabel name, else the value itself as text."""
    if label_names and isinstance(value, int) and 0 <= value < len(label_names):
        return label_names[value]
    return str(value)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """A fixed stratified split that keeps each group (`groups`: (N,) the position of each
    item's group's first item; default: every item its own) on one side: the groups are
    split, stratified by their first item's label. A class with a single group goes to
    train (it cannot be split)."""
    positions = np.arange(len(labels))
    groups = positions if groups is None else groups
    firsts = np.unique(groups)  # ascending: with no groups, every position
    counts = np.bincount(labels[firsts], minlength=labels.max(initial=0) + 1)
    single = np.isin(labels[firsts], np.flatnonzero(counts == 1))
    splittable = firsts[~single]
    n_classes = int(np.count_nonzero(counts >= 2))
    n_val = int(np.ceil(val_fraction * len(splittable)))
    # max(..., 1): with no class of two images, nothing can go to validation at all.
    if n_val < max(n_classes, 1) or len(splittable) - n_val < n_classes:
        unit = "images" if len(firsts) == len(labels) else "groups of duplicates"
        raise ImgrecError(
            f"param val_fraction={val_fraction} splits {len(splittable)} {unit} into {n_val} "
            f"for validation, but a stratified split needs at least one per class on each side "
            f"({n_classes} classes); change val_fraction or fetch more rows."
        )
    from sklearn.model_selection import train_test_split  # slow import; only needed here

    _, val = train_test_split(
        splittable, test_size=n_val, stratify=labels[splittable], random_state=seed
    )
    in_val = np.isin(groups, val)
    return positions[~in_val].astype(np.int64), positions[in_val].astype(np.int64)


def has_label(label: object) -> bool:
    """False for null, NaN and the Hugging Face ClassLabel's -1 ("no label")."""
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return False
    return not (isinstance(label, int) and label < 0)


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk is then an ENOSPC error here,
    not a SIGBUS while pixels are written into a hole."""
    fallocate = getattr(os, "posix_fallocate", None)  # not on macOS: sparse files there
    if fallocate is None:
        return
    with open(path, "r+b") as handle:
        try:
            fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here
                raise


def decode_group(
    group: pa.Table, img_size: int, keep_unlabeled: bool = False
) -> tuple[np.ndarray, list, list[str | None], list[duplicates.Fingerprint]]:
    """A Dask task: one row group's images decoded, on whichever worker runs it.

    The row group travels in with the task and the pixels come back, so a worker needs
    no view of the stage's files: it may be a process here or a machine of a cluster.
    Returns the kept rows' pixels (K, S, S, 3), the group's labels, each row's skip
    reason (None: kept), and the kept rows' fingerprints (for duplicates).
    """
    blobs = pc.struct_field(group.column("image").combine_chunks(), "bytes").to_pylist()
    labels = group.column("label").to_pylist()
    kept, reasons = [], []
    for blob, label in zip(blobs, labels, strict=True):
        if not (keep_unlabeled or has_label(label)):
            reasons.append("unlabeled")
            continue
        try:
            kept.append(images.decode(blob, img_size))
            reasons.append(None)
        except images.SkippedImage as skipped:
            reasons.append(skipped.reason)
    pixels = np.stack(kept) if kept else np.empty((0, img_size, img_size, 3), np.uint8)
    return pixels, labels, reasons, [duplicates.fingerprint(image) for image in kept]


@dataclass
class Decoded:
    """What the decode pass found: the rows kept, with their labels, and why others were not."""

    kept_rows: list[int] = field(default_factory=list)
    kept_labels: list = field(default_factory=list)
    fingerprints: list[duplicates.Fingerprint] = field(default_factory=list)  # kept rows'
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> row numbers


def decode_rows(
    parquet: pq.ParquetFile, staging_path: Path, img_size: int, client: Any, keep_unlabeled: bool
) -> Decoded:
    """Decode every row group as a Dask task; write the pixels into the staging array."""
    sizes = [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
    firsts = (np.cumsum(sizes, dtype=np.int64) - sizes).tolist()  # each group's first row
    # Scattered one by one as the window of tasks moves on, so the client holds a few
    # groups, not the file; `hash=False`: two equal groups are still two pieces of data.
    tasks = (
        (client.scatter(parquet.read_row_group(group, columns=["image", "label"]), hash=False),
         img_size, keep_unlabeled)
        for group in range(len(sizes))
    )  # fmt: skip
    staging = np.load(staging_path, mmap_mode="r+")
    found = Decoded()
    # disable=None: a bar on a terminal only; a log gets prepare's summary line.
    with tqdm(total=sum(sizes), desc="prepare", unit="img", disable=None) as progress:
        decoded = ordered_results(client, decode_group, tasks)
        for first_row, (pixels, labels, reasons, fingerprints) in zip(firsts, decoded, strict=True):
            rows = range(first_row, first_row + len(labels))
            kept = [row for row, reason in zip(rows, reasons, strict=True) if reason is None]
            staging[kept] = pixels
            found.fingerprints += fingerprints
            for row, label, reason in zip(rows, labels, reasons, strict=True):
                if reason is None:
                    found.kept_rows.append(row)
                    found.kept_labels.append(label)
                else:
                    found.skipped[reason] += 1
                    found.examples.setdefault(reason, []).append(row)
            progress.update(len(labels))
    staging.flush()
    return found


def check_skips(found: Decoded, total: int, max_bad_fraction: float) -> None:
    """Log what was skipped; stop if too much was, or nothing is left."""
    n_skipped = sum(found.skipped.values())
    for reason, rows in found.examples.items():
        log.warning("skipped %d row(s) (%s), e.g. rows %s", len(rows), reason, rows[:5])
    if total and n_skipped / total > max_bad_fraction:
        raise ImgrecError(
            f"{n_skipped} of {total} rows ({n_skipped / total:.1%}) could not be used "
            f"({dict(found.skipped)}), more than param max_bad_fraction={max_bad_fraction}; "
            "check the source data."
        )
    if not found.kept_rows:
        raise ImgrecError("no row of the fetched data holds a usable image.")


def compact(staging_path: Path, images_path: Path, kept_rows: list[int]) -> None:
    """Move the kept rows' pixels from the staging array into the final one, in order."""
    staging = np.load(staging_path, mmap_mode="r")
    if len(kept_rows) == len(staging):
        del staging
        os.replace(staging_path, images_path)  # nothing skipped: no copy at all
        return
    images = np.lib.format.open_memmap(
        images_path, mode="w+", dtype=np.uint8, shape=(len(kept_rows), *staging.shape[1:])
    )
    _reserve(images_path)
    for start in range(0, len(kept_rows), _COMPACT_ROWS):
        rows = kept_rows[start : start + _COMPACT_ROWS]
        images[start : start + len(rows)] = staging[rows]
    images.flush()
    del images, staging
    staging_path.unlink()


def apply_corrections(
    found: Decoded, reviewed: Sequence[corrections.Correction], label_names: list[str] | None
) -> corrections.Plan:
    """Relabel and drop the kept rows as the reviewed corrections say (`found` changes); a
    correction that does not fit the data is skipped and counted (`corrections.plan`).
    Before duplicates are grouped and the split is drawn: a dropped row is in neither."""
    values = sorted({label for label in found.kept_labels if has_label(label)})
    value_of = {label_text(value, label_names): value for value in values}
    seen = [label_text(v, label_names) if has_label(v) else "" for v in found.kept_labels]
    planned = corrections.plan(reviewed, found.kept_rows, seen, list(value_of))
    for position, new_label in planned.relabel.items():
        found.kept_labels[position] = value_of[new_label]
    if planned.drop:
        keep = np.setdiff1d(np.arange(len(found.kept_rows)), planned.drop)
        found.kept_rows = [found.kept_rows[k] for k in keep]
        found.kept_labels = [found.kept_labels[k] for k in keep]
        found.fingerprints = [found.fingerprints[k] for k in keep]
    if reviewed:
        log.info("corrections: %d relabelled, %d dropped, %d kept as they were, %d skipped",
                 planned.counts["relabel"], planned.counts["drop"], planned.counts["keep"],
                 planned.counts["skipped"])  # fmt: skip
    return planned


def find_duplicates(found: Decoded, config: DecodeConfig) -> tuple[np.ndarray, list[dict]]:
    """Group the kept rows' duplicates, warning before the split when the groups look
    implausible for copies; with `duplicates: drop`, keep each group's first row only
    (`found` shrinks): every row dropped is a verified copy of the one kept. Returns each
    kept row's group (a position) and the groups, by row number, for the report."""
    groups, found_groups = duplicates.duplicate_groups(
        found.fingerprints, config.near_duplicate_bits
    )
    warning = duplicates.implausible(groups)
    if warning:
        log.warning("%s", warning)
    rows = np.asarray(found.kept_rows, dtype=np.int64)
    report = [
        {"row_ids": rows[g["positions"]].tolist(), "kind": g["kind"], "hash_bits": g["hash_bits"]}
        for g in found_groups
    ]
    if config.duplicates == "drop":
        keep = np.unique(groups)
        found.kept_rows = rows[keep].tolist()
        found.kept_labels = [found.kept_labels[k] for k in keep]
        found.fingerprints = [found.fingerprints[k] for k in keep]
        groups = np.arange(len(keep))
    return groups, report


@dataclass
class DecodedImages:
    """What `decode_into` leaves besides the pixels in `out_dir`."""

    found: Decoded
    total: int  # rows read
    groups: np.ndarray  # (K,) each kept row's duplicate group, as a position
    group_report: list[dict]  # the groups by row number
    dropped: int  # rows dropped as verified copies (`duplicates: drop`), else 0
    class_names_in_metadata: list[str] | None
    corrections: corrections.Plan  # what the reviewed corrections changed


def decode_into(
    parquet_path: str | os.PathLike,
    out_dir: Path,
    config: DecodeConfig,
    keep_unlabeled: bool,
    reviewed: Sequence[corrections.Correction] = (),
) -> DecodedImages:
    """Decode every image exactly once into `out_dir / IMAGES_FILE`, as Dask tasks on
    `config.dask_scheduler`'s workers; apply the `reviewed` corrections; group the
    duplicates."""
    parquet = pq.ParquetFile(parquet_path)
    total = parquet.metadata.num_rows
    staging_path = out_dir / "staging.npy"
    # One slot per row, filled at the row's position; compacted afterwards if rows were skipped.
    staging = np.lib.format.open_memmap(
        staging_path, mode="w+", dtype=np.uint8, shape=(total, config.img_size, config.img_size, 3)
    )
    del staging  # the header is written; decode_rows fills in the pixels
    _reserve(staging_path)
    groups = parquet.num_row_groups
    with dask_client(config.dask_scheduler, processes=True, tasks=groups) as client:
        found = decode_rows(parquet, staging_path, config.img_size, client, keep_unlabeled)
    check_skips(found, total, config.max_bad_fraction)
    label_names = class_names_from_metadata(parquet.schema_arrow.metadata)
    planned = apply_corrections(found, reviewed, label_names)
    before = len(found.kept_rows)
    duplicate_of, duplicate_groups = find_duplicates(found, config)
    dropped = before - len(found.kept_rows)
    compact(staging_path, out_dir / IMAGES_FILE, found.kept_rows)
    return DecodedImages(
        found, total, duplicate_of, duplicate_groups, dropped, label_names, planned
    )


def save_decoded(
    out_dir: str | os.PathLike,
    decoded: DecodedImages,
    labels: np.ndarray,
    class_names: list[str],
    split: tuple[np.ndarray, np.ndarray],
    config: DecodeConfig,
) -> ImageHashes:
    """Everything of the prepared dataset but the pixels (`decode_into` wrote those), with
    `split` (train, val positions); the images' hashes."""
    found = decoded.found
    row_ids = np.asarray(found.kept_rows, dtype=np.int64)
    save_prepared_labels(out_dir, labels=labels, row_ids=row_ids, train_index=split[0],
                         val_index=split[1], class_names=class_names,
                         img_size=config.img_size)  # fmt: skip
    return ImageHashes(
        row_ids, found.fingerprints, row_ids[decoded.groups], config.near_duplicate_bits
    )


def counts_of(decoded: DecodedImages, n_classes: int) -> dict:
    found = decoded.found
    return {
        "rows_read": decoded.total,
        "rows_skipped": sum(found.skipped.values()),
        "skipped_by_reason": {reason: found.skipped.get(reason, 0) for reason in SKIP_REASONS},
        "skipped_rows_e_g": {reason: rows[:10] for reason, rows in sorted(found.examples.items())},
        "images": len(found.kept_rows),
        "classes": n_classes,
        # Rows that duplicate an earlier one (dropped with `duplicates: drop`), and the
        # groups by row number, each group's first row the one kept.
        "duplicate_rows": sum(len(group["row_ids"]) - 1 for group in decoded.group_report),
        "duplicate_rows_dropped": decoded.dropped,
        "duplicate_groups": decoded.group_report,
    }


def prepare(
    parquet_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: PrepareConfig,
    reviewed: Sequence[corrections.Correction] = (),
) -> tuple[dict, ImageHashes]:
    """Decode every image exactly once into `out_dir`, as Dask tasks on
    `config.dask_scheduler`'s workers, apply the `reviewed` corrections, and split it;
    return the counts for the report and the images' hashes."""
    decoded = decode_into(parquet_path, Path(out_dir), config, False, reviewed)
    found = decoded.found
    labels, class_names = class_ids(found.kept_labels, decoded.class_names_in_metadata)
    train_index, val_index = stratified_split(
        labels, config.val_fraction, config.seed, decoded.groups
    )
    hashes = save_decoded(out_dir, decoded, labels, class_names, (train_index, val_index), config)
    counts = counts_of(decoded, len(class_names))
    log.info(
        "prepared %d images (%d skipped; %d duplicates in %d groups, %d dropped), "
        "%d classes, %d train / %d val", len(found.kept_rows), counts["rows_skipped"],
        counts["duplicate_rows"], len(decoded.group_report), decoded.dropped,
        len(class_names), len(train_index), len(val_index),
    )  # fmt: skip
    counts["train_images"], counts["val_images"] = len(train_index), len(val_index)
    planned = decoded.corrections  # by decision, and why each skipped one was skipped
    counts["corrections"] = {
        **{decision: planned.counts[decision] for decision in corrections.DECISIONS},
        "applied": planned.applied,
        "skipped": planned.counts["skipped"],
        "skipped_why": planned.skipped,
    }
    return counts, hashes
