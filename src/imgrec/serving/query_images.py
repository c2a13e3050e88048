"""Query images: read from a path or URL (`read_image`), decoded exactly as prepare decodes
the catalog's (`decode_image`, `load_images`), and the one-sentence reason a query is
unusable (`UnusableQuery`, `describe`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from imgrec.errors import ImgrecError, first_line

if TYPE_CHECKING:
    import numpy as np


class UnusableQuery(ImgrecError):
    """A query image that cannot be read or decoded; `reason` says why without naming it.
    `skip_reason` is why the decoder refused the bytes (`images.SKIP_REASONS`), None when
    they could not be read."""

    def __init__(self, source: str, reason: str, skip_reason: str | None = None):
        reason = first_line(reason).rstrip(".")
        super().__init__(f"{source}: {reason}.")
        self.source = source
        self.reason = reason
        self.skip_reason = skip_reason


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it was raised from, down to the first cause."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def describe(error: BaseException) -> str:
    """An exception in a few words: `Connection refused`, not `[Errno 111] ...: '/a/b'`."""
    if isinstance(error, OSError) and isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror  # socket.gaierror: `Name or service not known`
    return str(error) or type(error).__name__


def _read_failure(error: Exception) -> str:
    """Why fsspec could not read a source.

    fsspec's HTTP backend reports every failure, a refused connection included,
    as FileNotFoundError; what really happened is in the exceptions it wraps.
    """
    chain = list(_chain(error))
    for cause in chain:
        status = getattr(cause, "status", None)  # an HTTP response (aiohttp's ClientResponseError)
        if isinstance(status, int) and status >= 400:
            if status == 404:
                return "not found (HTTP 404)"
            return f"HTTP {status} {getattr(cause, 'message', '')}".rstrip()
    if any(isinstance(c, ConnectionError | TimeoutError | socket.gaierror) for c in chain):
        return f"could not connect ({describe(chain[-1])})"
    if isinstance(error, FileNotFoundError):
        return "not found"
    return describe(error)


def read_image(source: str) -> bytes:
    """The bytes of a local file or of any fsspec URL (https://, s3://, hf://, ...)."""
    import fsspec

    try:
        with fsspec.open(source, "rb") as handle:
            return handle.read()
    except Exception as error:
        # Each fsspec backend raises its own types (aiohttp, botocore, huggingface_hub, ...).
        raise UnusableQuery(source, _read_failure(error)) from error


def decode_image(
    data: bytes, img_size: int, source: str, max_decoded_bytes: int | None = None
) -> np.ndarray:
    """(img_size, img_size, 3) uint8: image bytes (read from `source`, or sent to a server)
    decoded exactly as prepare decodes the catalog's; a server refuses, from the header,
    an image whose pixels would take more than `max_decoded_bytes`."""
    from imgrec.data.images import SkippedImage, decode

    try:
        return decode(data, img_size, max_decoded_bytes)
    except SkippedImage as skipped:
        detail = str(skipped)
        why = skipped.reason if detail == skipped.reason else f"{skipped.reason}: {detail}"
        raise UnusableQuery(source, f"not a usable image ({why})", skipped.reason) from skipped


def load_image(source: str, img_size: int) -> np.ndarray:
    """(img_size, img_size, 3) uint8: the source decoded exactly as prepare decodes it."""
    return decode_image(read_image(source), img_size, source)


def load_images(
    sources: Sequence[str], img_size: int
) -> tuple[np.ndarray, dict[int, UnusableQuery]]:
    """(Q, S, S, 3) uint8 images of the sources that could be used, in order; why each other
    one could not, by its position in `sources`.
    """
    import numpy as np

    decoded, failed = [], {}
    for position, source in enumerate(sources):
        try:
            decoded.append(load_image(source, img_size))
        except UnusableQuery as unusable:
            failed[position] = unusable
    if not decoded:
        return np.empty((0, img_size, img_size, 3), np.uint8), failed
    return np.stack(decoded), failed
