"""Stage fetch: where images come from: the built-in digits, local parquet, or any fsspec
URL. Past 400 lines because it meets every source's oddities (schemas, row groups of any
size, streaming, Dask tasks) in one place, so nothing downstream has to.

Every source reaches the rest of the pipeline in the Hugging Face Image schema:
`image: struct<bytes: binary, path: string>`, `label: int | string`.

Row groups are read as Dask tasks (`cluster.ordered_results`), each with pyarrow's
streaming reader over an fsspec file handle, and written in order by the stage. Not
with `dask.dataframe`: a Dask partition is a whole row group and `get_partition(i)`
per partition made the time grow with the square of the number of row groups, while
here a task is one big row group or a run of small ones, so a source of 40,000
one-row groups is ~160 tasks. Memory is a constant plus the tasks in flight, each of at
most MAX_TASK_ROWS rows; a bigger row group (pyarrow writes a file as one group of up
to ~1M rows by default) streams through the stage a batch at a time instead, since
pyarrow cannot start reading in the middle of a group. The least pyarrow can read
is one page, and pyarrow's own writer puts up to 1,024 values of a binary column in
each page (~130 MB of photos), so for such files that stays the floor whatever
`rows` is.
"""

import contextlib
import io
import itertools
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from tqdm import tqdm

from imgrec.config import StageConfig, param
from imgrec.data.raw_parquet import (
    IMAGE_TYPE,
    WRITE_OPTIONS,
    class_names_from_metadata,
    hf_features,
)
from imgrec.errors import ImgrecError, first_line
from imgrec.pipeline.dask_cluster import LOCAL, dask_client, ordered_results

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIGITS = "builtin:digits"
BUILTIN_SOURCES = (BUILTIN_DIGITS,)
# The Hugging Face parquet export of a dataset lives on this revision.
HF_PARQUET_REVISION = "refs%2Fconvert%2Fparquet"
# Rows per row group in the fetched file: prepare hands one group to a Dask task at a
# time, so this bounds a task's memory (~25 MB of photo JPEGs) whatever the source's groups.
OUT_ROW_GROUP_ROWS = 256
# Rows one Dask task reads at most (~165 MB of photo JPEGs); a bigger source row group
# streams through the stage instead (`_read`).
MAX_TASK_ROWS = 8 * OUT_ROW_GROUP_ROWS
# Bytes the reader buffers per column: pages stream through it, never a whole column chunk.
READ_BUFFER_BYTES = 1 << 20
_HF_DATASET_ROOT = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/?$")


@dataclass(frozen=True)
class FetchConfig(StageConfig):
    source: str = "builtin:digits"
    rows: int = param(40000, ge=1)
    dask_scheduler: str = LOCAL  # where row groups are read; the output is the same anywhere


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
        raise ImgrecError(f"cannot reach source {source!r}: {first_line(error)}") from error
    if not files:
        raise ImgrecError(f"source {source!r} matches no parquet file.")
    return fs, sorted(files)


@dataclass(frozen=True)
class _SourceFile:
    path: str  # as its filesystem names it
    name: str  # as messages show it
    schema: pa.Schema
    num_rows: int
    group_rows: tuple[int, ...]


def _is_binary(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_binary_view(data_type)
        or pa.types.is_fixed_size_binary(data_type)
    )


def _is_string(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def _decoded(data_type: pa.DataType) -> pa.DataType:
    """A dictionary-encoded column's value type (pandas categoricals are written that way)."""
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def _reason(error: BaseException) -> str:
    """The first sentence of an error, so a message stays one sentence."""
    return first_line(error).split(". ")[0].rstrip(".")


def _read_footer(fs: fsspec.AbstractFileSystem, path: str) -> _SourceFile:
    name = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle, pre_buffer=False)
            meta = parquet.metadata
            group_rows = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            return _SourceFile(path, name, parquet.schema_arrow, meta.num_rows, group_rows)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ImgrecError(
            f"source file {name} is not a readable parquet file: {_reason(error)}."
        ) from error
    except Exception as error:  # network and auth errors come in many types
        raise ImgrecError(f"cannot read source file {name}: {_reason(error)}.") from error


def _check_schema(file: _SourceFile, first: _SourceFile, labels_required: bool) -> None:
    """One sentence naming the file and column unless `file` holds what fetch can write
    (`first`: the first file with rows and labels)."""
    schema = file.schema
    for column in ("image", "label") if labels_required else ("image",):
        if column not in schema.names:
            raise ImgrecError(
                f"source file {file.name} has no {column!r} column "
                f"(it has: {', '.join(schema.names)}); expected the Hugging Face Image schema "
                "with columns 'image' and 'label'."
            )
    if file.num_rows == 0:  # its types carry nothing (an empty list is null-typed)
        return
    image = schema.field("image").type
    if pa.types.is_struct(image) and image.get_field_index("bytes") >= 0:
        bytes_type = image.field("bytes").type
        has_path = image.get_field_index("path") >= 0
        path_type = image.field("path").type if has_path else pa.null()
        if not _is_binary(bytes_type):
            raise ImgrecError(
                f"source file {file.name}: column 'image' field 'bytes' is {bytes_type}; "
                "expected binary image bytes."
            )
        if not (_is_string(path_type) or pa.types.is_null(path_type)):
            raise ImgrecError(
                f"source file {file.name}: column 'image' field 'path' is {path_type}; "
                "expected a string."
            )
    elif not _is_binary(image):
        raise ImgrecError(
            f"source file {file.name}: column 'image' is {image}; expected "
            "struct<bytes: binary, path: string> or plain binary image bytes."
        )
    if "label" not in schema.names:  # a catalog's file without labels
        return
    label = _decoded(schema.field("label").type)
    if not (_is_class_id(label) or _is_string(label)):
        raise ImgrecError(
            f"source file {file.name}: column 'label' is {label}; expected integer class ids "
            "or string class names."
        )
    first_label = _decoded(first.schema.field("label").type)
    if _is_class_id(label) != _is_class_id(first_label):
        raise ImgrecError(
            f"source file {file.name}: column 'label' is {label}, but {first.name} has "
            f"{first_label}; every file must hold integer labels, or every file string labels."
        )


def _is_class_id(kind: pa.DataType) -> bool:
    # pandas writes integer labels with missing values as float64, the missing ones NaN.
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def to_hf_schema(batch: pa.Table) -> pa.Table:
    """Normalise a batch to `image: struct<bytes, path>`; labels become int64 or string."""
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
    label = label.cast(_decoded(label.type))
    if pa.types.is_floating(label.type):
        # NaN is "no label": null, which prepare skips as unlabeled. A fraction such as 0.5
        # is no class id: the safe cast below refuses it.
        label = pc.if_else(pc.is_nan(label), pa.scalar(None, label.type), label)
    label = label.cast(pa.int64()) if _is_class_id(label.type) else label.cast(pa.string())
    return pa.table({"image": pa.chunked_array(chunks, IMAGE_TYPE), "label": label})


def _path_field(chunk: pa.StructArray) -> pa.Array:
    if chunk.type.get_field_index("path") >= 0:
        return chunk.field("path").cast(pa.string())
    return pa.nulls(len(chunk), pa.string())


@dataclass(frozen=True)
class _Part:
    """Rows of one source row group: the first `rows` of them."""

    path: str
    name: str  # as messages show the file
    group: int
    first_row: int  # the group's first row in its file, for messages
    rows: int
    # The type of the null labels given to a file without a label column (a catalog's);
    # None: the file has labels.
    null_label_type: pa.DataType | None = None


def _tasks(
    files: list[_SourceFile], rows: int, label_type: pa.DataType | None = None
) -> Iterator[list[_Part]]:
    """The first `rows` rows of `files`, in order, as tasks: lists of parts.

    Small source groups are gathered, across files too, into tasks of up to
    OUT_ROW_GROUP_ROWS rows, so tiny groups or files make neither tiny tasks nor a fetched
    file of tiny row groups; a bigger group is a task of its own. No output row group
    spans two tasks, so the stage writes each task's rows as they come, copying nothing.
    A file without a label column (a catalog's) gets null labels of `label_type`.
    """
    task: list[_Part] = []
    for file in files:
        first_row = 0
        for group, group_rows in enumerate(file.group_rows):
            if rows <= 0:
                break
            null_label = None if "label" in file.schema.names else (label_type or pa.int64())
            part = _Part(file.path, file.name, group, first_row, min(group_rows, rows), null_label)
            first_row += group_rows
            rows -= part.rows
            if not part.rows:
                continue
            if task and sum(p.rows for p in task) + part.rows > OUT_ROW_GROUP_ROWS:
                yield task
                task = []
            if group_rows >= OUT_ROW_GROUP_ROWS:
                yield [part]
            else:
                task.append(part)
    if task:
        yield task


def read_rows(fs: fsspec.AbstractFileSystem, task: list[_Part]) -> Iterator[pa.Table]:
    """The task's rows in the HF schema, at most OUT_ROW_GROUP_ROWS at a time."""
    for part in task:
        read = 0
        try:
            with fs.open(part.path, "rb") as handle:
                # pre_buffer would read whole column chunks; a small buffer streams pages.
                parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
                batches = parquet.iter_batches(
                    batch_size=min(OUT_ROW_GROUP_ROWS, part.rows),
                    row_groups=[part.group],
                    columns=["image"] if part.null_label_type else ["image", "label"],
                    use_threads=False,
                )
                for batch in batches:
                    table = pa.Table.from_batches([batch.slice(0, part.rows - read)])
                    if part.null_label_type:
                        table = table.append_column(
                            "label", pa.nulls(len(table), part.null_label_type)
                        )
                    table = to_hf_schema(table)
                    read += table.num_rows
                    yield table
                    if read == part.rows:
                        break
        except Exception as error:  # a corrupt page, a dropped connection, an odd value, ...
            raise ImgrecError(
                f"cannot read source file {part.name} after {part.first_row + read} rows: "
                f"{_reason(error)}."
            ) from error


def read_task(fs: fsspec.AbstractFileSystem, task: list[_Part]) -> pa.Table:
    """A Dask task: the task's rows, read where it runs, as one table of one chunk (the
    writer is twice as slow on several; combined here, in parallel)."""
    return pa.concat_tables(list(read_rows(fs, task))).combine_chunks()


def _read(client: Any, fs: fsspec.AbstractFileSystem, tasks: Iterator[list[_Part]]):
    """Every task's rows, in order: as Dask tasks, but a group too big for one (a file
    written as one huge group, say) streams through here a batch at a time, so no worker
    ever holds more than MAX_TASK_ROWS rows."""
    for streamed, run in itertools.groupby(tasks, key=lambda task: task[0].rows > MAX_TASK_ROWS):
        if streamed:
            for task in run:
                yield from read_rows(fs, task)
        else:
            yield from ordered_results(client, read_task, ((fs, task) for task in run))


def _output_groups(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Each task's table in row groups of OUT_ROW_GROUP_ROWS rows (slices: no copy)."""
    for table in tables:
        for start in range(0, table.num_rows, OUT_ROW_GROUP_ROWS):
            yield table.slice(start, OUT_ROW_GROUP_ROWS)


def _builtin_fetch(source: str, rows: int, out_path: str | Path) -> FetchResult:
    if source != BUILTIN_DIGITS:
        raise ImgrecError(
            f"param source {source!r} names no built-in dataset; the built-in sources are: "
            f"{', '.join(BUILTIN_SOURCES)}."
        )
    with tempfile.TemporaryDirectory() as tmp:
        # Materialised as parquet so the built-in data takes the same path as any other.
        # Its tasks run here: a cluster's workers cannot see this folder, and 1,797 small
        # images need no cluster.
        builtin = Path(tmp) / "digits.parquet"
        pq.write_table(digits_table(), builtin, row_group_size=500)
        fs, paths = list_parquet_files(str(builtin))
        return _fetch(source, fs, paths, rows, out_path, client=None)


def fetch(
    source: str,
    rows: int,
    out_path: str | Path,
    *,
    dask_scheduler: str = LOCAL,
    labels_required: bool = True,
) -> FetchResult:
    """Write the first `rows` rows of `source`, in order, to one parquet file.

    Every file's footer is read and its schema checked before a row is written. Row
    groups are then read as Dask tasks on `dask_scheduler`'s workers (which read the
    source themselves: give a cluster a source its workers can reach) and written here
    in order, so memory is a constant plus the row groups in flight whatever the source's
    size, and the file is the same whichever scheduler ran the tasks. A failure leaves no
    file at `out_path`. Without `labels_required` (a catalog), a file may lack the label
    column: its rows get null labels.
    """
    if source.startswith(BUILTIN_PREFIX):
        return _builtin_fetch(source, rows, out_path)
    fs, paths = list_parquet_files(source)
    with dask_client(dask_scheduler, processes=False) as client:
        return _fetch(source, fs, paths, rows, out_path, client, labels_required)


def _fetch(
    source: str,
    fs: fsspec.AbstractFileSystem,
    paths: list[str],
    rows: int,
    out_path: str | Path,
    client: Any,
    labels_required: bool = True,
) -> FetchResult:
    files = list(ordered_results(client, _read_footer, ((fs, path) for path in paths)))
    # Label types are compared with the first file that holds rows (and labels).
    labelled = [file for file in files if "label" in file.schema.names] or files
    first = next((file for file in labelled if file.num_rows), labelled[0])
    for file in files:
        _check_schema(file, first, labels_required)
    available = sum(file.num_rows for file in files)
    if available == 0:
        raise ImgrecError(f"source {source!r} has no rows.")

    first_metadata = files[0].schema.metadata or {}
    class_names = class_names_from_metadata(first_metadata)
    metadata = {b"huggingface": first_metadata[b"huggingface"]} if class_names else None
    if "label" in first.schema.names and not _is_class_id(
        _decoded(first.schema.field("label").type)
    ):
        label_type = pa.string()
    else:
        label_type = pa.int64()
    tables = _read(client, fs, _tasks(files, rows, label_type))
    writer = None  # opened at the first rows, so a source without rows leaves no file
    written = 0
    try:
        with tqdm(total=min(rows, available), desc="fetch", unit="row", disable=None) as progress:
            for batch in _output_groups(tables):
                if writer is None:
                    schema = batch.schema.with_metadata(metadata)
                    writer = pq.ParquetWriter(out_path, schema, **WRITE_OPTIONS)
                writer.write_table(batch, row_group_size=OUT_ROW_GROUP_ROWS)
                written += batch.num_rows
                progress.update(batch.num_rows)
        if writer is not None:
            writer.close()
    except BaseException as error:
        if writer is not None:
            with contextlib.suppress(Exception):  # the first error is the one to report
                writer.close()
        Path(out_path).unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk, a vanished folder
            raise ImgrecError(f"cannot write {out_path}: {_reason(error)}.") from error
        raise
    if written == 0:  # footers that promised rows the row groups did not hold
        raise ImgrecError(f"source {source!r} has no rows.")
    return FetchResult(rows_fetched=written, files_read=len(files), class_names=class_names)
