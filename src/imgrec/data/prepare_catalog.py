"""Stage prepare_catalog: the catalog's images decoded, resized and grouped by prepare's code,
at the model's img_size, but kept whole: no split (the model trained on none of them) and
rows without a label kept, labelled UNLABELED. When the catalog is the training data, its
prepared images as they are (`catalog_from_training`)."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgrec.data.image_hashes import ImageHashes
from imgrec.data.prepare import DecodeConfig, class_ids, counts_of, decode_into, save_decoded
from imgrec.data.prepared import UNLABELED, link_prepared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareCatalogConfig(DecodeConfig):
    pass


def prepare_catalog(
    parquet_path: str | os.PathLike, out_dir: str | os.PathLike, config: PrepareCatalogConfig
) -> tuple[dict, ImageHashes]:
    """The catalog's images prepared as `prepare.prepare` does the training data's, but
    whole; the counts for the report and the images' hashes."""
    decoded = decode_into(parquet_path, Path(out_dir), config, keep_unlabeled=True)
    found = decoded.found
    labels, class_names = class_ids(found.kept_labels, decoded.class_names_in_metadata)
    no_split = (np.empty(0, np.int64), np.empty(0, np.int64))
    hashes = save_decoded(out_dir, decoded, labels, class_names, no_split, config)
    counts = counts_of(decoded, len(class_names))
    counts["unlabeled_images"] = int(np.count_nonzero(labels == UNLABELED))
    log.info("prepared a catalog of %d images (%d unlabeled, %d skipped, %d duplicates)",
             len(labels), counts["unlabeled_images"], counts["rows_skipped"],
             counts["duplicate_rows"])  # fmt: skip
    return counts, hashes


def catalog_from_training(
    prepared_dir: str | os.PathLike, hashes: ImageHashes, out_dir: str | os.PathLike
) -> tuple[dict, ImageHashes]:
    """The catalog when it is the training data (`catalog_source` empty): the prepared
    images as they are (`link_prepared`), split and all, so every later stage gives the
    bytes it gave before catalogs could be apart."""
    link_prepared(prepared_dir, out_dir)
    n_groups = len(np.unique(hashes.duplicate_groups))
    counts = {"source": "the training data", "images": len(hashes.row_ids),
              "duplicate_rows": len(hashes.row_ids) - n_groups, "rows_skipped": 0,
              "unlabeled_images": 0}  # fmt: skip
    return counts, hashes
