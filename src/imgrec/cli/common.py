"""What the commands share: the pipeline's outputs as options, query images as arguments,
and how answers print."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imgrec.errors import ImgrecError
from imgrec.serving.query import (
    DEFAULT_CATALOG,
    DEFAULT_MODEL,
    DEFAULT_PREPARED,
    UnusableQuery,
    load_images,
)

if TYPE_CHECKING:
    import numpy as np


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def outputs_parent() -> argparse.ArgumentParser:
    """The pipeline's outputs, which every command but `machine` loads."""
    outputs = argparse.ArgumentParser(add_help=False)
    outputs.add_argument(
        "--model",
        metavar="FILE",
        help=f"model checkpoint from the train stage (default: {DEFAULT_MODEL})",
    )
    outputs.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (CUDA when present), cpu, cuda or cuda:N",
    )
    outputs.add_argument(
        "--catalog",
        metavar="DIR",
        help=f"embeddings folder from the embed stage (default: {DEFAULT_CATALOG})",
    )
    outputs.add_argument(
        "--prepared",
        metavar="DIR",
        help=f"the catalog's prepared images, from prepare_catalog (default: {DEFAULT_PREPARED})",
    )
    return outputs


def queries_parent() -> argparse.ArgumentParser:
    """The outputs, and the images to answer for: what `recommend` and `classify` take."""
    common = argparse.ArgumentParser(add_help=False, parents=[outputs_parent()])
    common.add_argument(
        "images",
        nargs="+",
        metavar="PATH_OR_URL",
        help="image file(s): local paths or fsspec URLs (https://, s3://, hf://, ...)",
    )
    common.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        default=256,
        help="images per forward pass (default: 256)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        help="print machine-readable JSON instead of a table: one entry per image, in order; "
        'an image that could not be used has an "error" field instead of its answer',
    )
    return common


def load_queries(
    sources: Sequence[str], img_size: int
) -> tuple[list[str], np.ndarray, dict[int, UnusableQuery]]:
    """`load_images`, plus the sources answered; a warning per skipped one; none is an error."""
    images, failed = load_images(sources, img_size)
    if len(sources) == 1 and failed:
        raise failed[0]
    for unusable in failed.values():
        print(f"warning: {unusable.source} skipped: {unusable.reason}.", file=sys.stderr)
    if len(failed) == len(sources):
        raise ImgrecError(f"none of the {len(sources)} images could be used.")
    answered = [s for position, s in enumerate(sources) if position not in failed]
    return answered, images, failed


def in_given_order(
    sources: Sequence[str], answers: Sequence[dict], failed: dict[int, UnusableQuery], key: str
) -> list[dict]:
    """One JSON entry per source, as given: its answer, or `{key: source, "error": why}`."""
    remaining = iter(answers)
    return [
        {key: source, "error": failed[position].reason} if position in failed else next(remaining)
        for position, source in enumerate(sources)
    ]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """Columns padded to their widest cell; `align` has one `l` or `r` per column."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(cells, widths, align, strict=True)
        ).rstrip()
        for cells in (header, *rows)
    )
