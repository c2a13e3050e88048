"""Stage fetch: where images come from: the built-in digits, local parquet, or any fsspec
URL. It meets every source's oddities (row groups of any size, streaming, Dask tasks; the
schemas in `source_schema`), so nothing downstream has to.

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
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from imgrec.config import StageConfig, param
from imgrec.data.raw_parquet import (
    IMAGE_TYPE,
    WRITE_OPTIONS,
    class_names_from_metadata,
    hf_features,
)
from imgrec.data.source_schema import (
    SourceFile,
    check_schema,
    decoded,
    is_class_id,
    read_footer,
    reason,
    to_hf_schema,
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
    files: list[SourceFile], rows: int, label_type: pa.DataType | None = None
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
                f"{reason(error)}."
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
    files = list(ordered_results(client, read_footer, ((fs, path) for path in paths)))
    # Label types are compared with the first file that holds rows (and labels).
    labelled = [file for file in files if "label" in file.schema.names] or files
    first = next((file for file in labelled if file.num_rows), labelled[0])
    for file in files:
        check_schema(file, first, labels_required)
    available = sum(file.num_rows for file in files)
    if available == 0:
        raise ImgrecError(f"source {source!r} has no rows.")

    first_metadata = files[0].schema.metadata or {}
    class_names = class_names_from_metadata(first_metadata)
    metadata = {b"huggingface": first_metadata[b"huggingface"]} if class_names else None
    if "label" in first.schema.names and not is_class_id(decoded(first.schema.field("label").type)):
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
            raise ImgrecError(f"cannot write {out_path}: {reason(error)}.") from error
        raise
    if written == 0:  # footers that promised rows the row groups did not hold
        raise ImgrecError(f"source {source!r} has no rows.")
    return FetchResult(rows_fetched=written, files_read=len(files), class_names=class_names)
