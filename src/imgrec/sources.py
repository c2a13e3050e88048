"""Where images come from: the built-in digits, local parquet, or any fsspec URL.

Every source is read through Dask, one row group at a time, and reaches the
rest of the pipeline in the Hugging Face Image schema:
`image: struct<bytes: binary, path: string>`, `label: int | string`.
"""

import io
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from imgrec.errors import ImgrecError
from imgrec.raw_parquet import IMAGE_TYPE, class_names_from_metadata, hf_features

log = logging.getLogger(__name__)

BUILTIN_DIGITS = "builtin:digits"
# The Hugging Face parquet export of a dataset lives on this revision.
HF_PARQUET_REVISION = "refs%2Fconvert%2Fparquet"
# Rows per row group in the fetched file: prepare hands one group to a worker at a time,
# so this bounds a worker's memory (~25 MB of photo JPEGs) whatever the source's groups.
OUT_ROW_GROUP_ROWS = 256
_HF_DATASET_ROOT = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/?$")


@dataclass(frozen=True)
class FetchResult:
    rows_fetched: int
    files_read: int
    class_names: list[str] | None


def digits_table() -> pa.Table:
    """scikit-learn's 1,797 bundled 8x8 handwritten digits as PNGs in the HF Image schema."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    encoded = []
    for index, pixels in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": f"digits/{index:04d}.png"})
    table = pa.table(
        {"image": pa.array(encoded, type=IMAGE_TYPE), "label": pa.array(digits.target, pa.int64())}
    )
    names = [str(name) for name in digits.target_names]
    return table.replace_schema_metadata({"huggingface": json.dumps(hf_features(names))})


def expand_source(source: str) -> str:
    """Turn a dataset id such as `hf://datasets/OWNER/NAME` into a glob of its parquet files."""
    match = _HF_DATASET_ROOT.match(source)
    if not match:
        return source
    revision = match["rev"] or HF_PARQUET_REVISION
    if revision in (HF_PARQUET_REVISION, "~parquet"):
        return f"hf://datasets/{match['repo']}@{revision}/default/train/*.parquet"
    return f"hf://datasets/{match['repo']}@{revision}/**/*.parquet"


def list_parquet_files(source: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The parquet files a source names, in sorted order, with the filesystem to read them."""
    url = expand_source(source)
    try:
        fs, _, paths = fsspec.get_fs_token_paths(url)
        files = []
        for path in paths:
            if fs.isdir(path):
                files += [p for p in fs.find(path) if p.endswith(".parquet")]
            elif fs.exists(path):
                files.append(path)
            elif any(char in path for char in "?["):
                # get_fs_token_paths expands only `*` globs; `?` and `[...]` are globs too.
                files += [p for p in fs.glob(path) if fs.isfile(p)]
    except ValueError as error:
        if "protocol" in str(error).lower():
            scheme = url.split("://")[0]
            raise ImgrecError(
                f"param source uses the unknown scheme {scheme!r}; give {BUILTIN_DIGITS}, "
                "a local parquet path or glob, or an fsspec URL such as hf://datasets/OWNER/NAME."
            ) from error
        raise ImgrecError(f"cannot read source {source!r}: {error}") from error
    except ImportError as error:
        raise ImgrecError(
            f"source {source!r} needs an extra package: {error}; pip install it and rerun."
        ) from error
    except Exception as error:  # network and auth errors come in many types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImgrecError(f"cannot reach source {source!r}: {reason}") from error
    if not files:
        raise ImgrecError(f"source {source!r} matches no parquet file.")
    return fs, sorted(files)


def _check_columns(schema: pa.Schema, source: str) -> None:
    for column in ("image", "label"):
        if column not in schema.names:
            raise ImgrecError(
                f"source {source!r} has no {column!r} column (it has: {', '.join(schema.names)}); "
                "expected the Hugging Face Image schema with columns 'image' and 'label'."
            )
    image_type = schema.field("image").type
    if not (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0) and not (
        pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
    ):
        raise ImgrecError(
            f"source {source!r} column 'image' is {image_type}; expected "
            "struct<bytes: binary, path: string> or plain binary image bytes."
        )


def to_hf_schema(batch: pa.Table) -> pa.Table:
    """Normalise a batch to `image: struct<bytes, path>`; labels keep their type."""
    image = batch.column("image")
    if pa.types.is_struct(image.type):
        chunks = [
            pa.StructArray.from_arrays(
                [chunk.field("bytes").cast(pa.binary()), _path_field(chunk)],
                fields=list(IMAGE_TYPE),
                mask=chunk.is_null(),
            )
            for chunk in image.chunks
        ]
    else:  # plain binary bytes, a common variant
        chunks = [
            pa.StructArray.from_arrays(
                [chunk.cast(pa.binary()), pa.nulls(len(chunk), pa.string())],
                fields=list(IMAGE_TYPE),
                mask=chunk.is_null(),
            )
            for chunk in image.chunks
        ]
    label = batch.column("label")
    label = label.cast(pa.int64()) if pa.types.is_integer(label.type) else label.cast(pa.string())
    return pa.table({"image": pa.chunked_array(chunks, IMAGE_TYPE), "label": label})


def _path_field(chunk: pa.StructArray) -> pa.Array:
    if chunk.type.get_field_index("path") >= 0:
        return chunk.field("path").cast(pa.string())
    return pa.nulls(len(chunk), pa.string())


def fetch(source: str, rows: int, out_path: str | Path) -> FetchResult:
    """Write the first `rows` rows of `source`, in order, to one parquet file.

    Reads one row group at a time through Dask and appends it to the output,
    so memory stays bounded by the largest row group whatever the dataset size.
    """
    if source == BUILTIN_DIGITS:
        with tempfile.TemporaryDirectory() as tmp:
            # Materialised as parquet so the built-in data takes the same path as any other.
            builtin = Path(tmp) / "digits.parquet"
            pq.write_table(digits_table(), builtin, row_group_size=500)
            return fetch(str(builtin), rows, out_path)

    import dask.dataframe as dd  # here, not at the top: prepare and the CLI import this module

    fs, files = list_parquet_files(source)
    with fs.open(files[0], "rb") as handle:
        schema = pq.read_schema(handle)
    _check_columns(schema, source)
    class_names = class_names_from_metadata(schema.metadata)

    frame = dd.read_parquet(
        [fs.unstrip_protocol(f) for f in files],
        columns=["image", "label"],
        split_row_groups=True,  # one partition per row group: stream, never load a file whole
        dtype_backend="pyarrow",
    )
    out_schema = None
    written = 0
    metadata = {b"huggingface": schema.metadata[b"huggingface"]} if class_names else None
    with tqdm(total=rows, desc="fetch", unit="row") as progress:
        writer = None
        try:
            for index in range(frame.npartitions):
                if written >= rows:
                    break
                part = frame.get_partition(index).compute()
                part = part.iloc[: rows - written]
                if part.empty:  # an empty row group would leave an empty file behind on error
                    continue
                batch = to_hf_schema(pa.Table.from_pandas(part, preserve_index=False))
                if writer is None:
                    out_schema = batch.schema.with_metadata(metadata)
                    writer = pq.ParquetWriter(out_path, out_schema)
                writer.write_table(batch.cast(out_schema), row_group_size=OUT_ROW_GROUP_ROWS)
                written += batch.num_rows
                progress.update(batch.num_rows)
        finally:
            if writer is not None:
                writer.close()
    if written == 0:
        raise ImgrecError(f"source {source!r} has no rows.")
    log.info("fetched %d rows from %d parquet file(s)", written, len(files))
    return FetchResult(rows_fetched=written, files_read=len(files), class_names=class_names)
