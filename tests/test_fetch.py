"""fetch and its helpers on tiny local parquet datasets (no network: loopback at most)."""

import hashlib
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import hf_metadata, make_parquet, png_bytes, tagged_images
from fsspec.implementations.local import LocalFileOpener

from imgrec.data import fetch as fetch_module
from imgrec.data.fetch import (
    BUILTIN_DIGITS,
    IMAGE_TYPE,
    class_names_from_metadata,
    expand_source,
    fetch,
)
from imgrec.errors import ImgrecError


def _paths(table: pa.Table) -> list[str]:
    return [value["path"] for value in table.column("image").to_pylist()]


@pytest.fixture
def three_files(tmp_path):
    """A folder of 3 parquet files: 3 rows (groups of 2), 7 rows (groups of 3), 5 rows (one group).

    Every row's label is its global position, so order and completeness are checkable.
    """
    folder = tmp_path / "ds"
    sizes, start = [3, 7, 5], 0
    for index, size in enumerate(sizes):
        make_parquet(
            folder / f"{index:04d}.parquet",
            tagged_images(size, start),
            list(range(start, start + size)),
            row_group_size=[2, 3, 5][index],
        )
        start += size
    return folder


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (1, 1),
        (2, 2),  # inside the first row group
        (5, 5),  # more than the first file holds
        (11, 11),  # ends mid-row-group in the second file
        (15, 15),  # exactly everything
        (100, 15),  # more than available
    ],
)
def test_fetch_takes_first_rows_in_order_across_files_and_row_groups(
    three_files, tmp_path, rows, expected, dask_scheduler
):
    out = tmp_path / "out.parquet"
    result = fetch(str(three_files), rows, out, dask_scheduler=dask_scheduler)
    table = pq.read_table(out)
    assert result.rows_fetched == expected
    assert result.files_read == 3
    assert table.num_rows == expected
    assert table.column("label").to_pylist() == list(range(expected))


def test_fetch_caps_the_rows_per_written_row_group(
    three_files, tmp_path, monkeypatch, dask_scheduler
):
    monkeypatch.setattr(fetch_module, "OUT_ROW_GROUP_ROWS", 2)
    out = tmp_path / "out.parquet"
    fetch(str(three_files), 15, out, dask_scheduler=dask_scheduler)
    metadata = pq.ParquetFile(out).metadata
    sizes = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
    assert max(sizes) == 2
    assert sum(sizes) == 15
    assert pq.read_table(out).column("label").to_pylist() == list(range(15))


def test_fetch_rows_match_the_source_bytes(three_files, tmp_path, dask_scheduler):
    out = tmp_path / "out.parquet"
    fetch(str(three_files), 9, out, dask_scheduler=dask_scheduler)
    images = pq.read_table(out).column("image").to_pylist()
    assert [image["bytes"] for image in images] == tagged_images(9)
    assert [image["path"] for image in images] == [f"img/{i}.png" for i in range(3)] + [
        f"img/{i}.png" for i in range(6)
    ]


def test_fetch_writes_hf_schema(three_files, tmp_path, dask_scheduler):
    out = tmp_path / "out.parquet"
    fetch(str(three_files), 4, out, dask_scheduler=dask_scheduler)
    schema = pq.read_schema(out)
    assert schema.names == ["image", "label"]
    assert schema.field("image").type == IMAGE_TYPE
    assert schema.field("label").type == pa.int64()


@pytest.mark.parametrize("pattern", ["000[12].parquet", "000?.parquet", "*[12].parquet"])
def test_fetch_glob_source(three_files, tmp_path, pattern, dask_scheduler):
    out = tmp_path / "out.parquet"
    if pattern == "000?.parquet":  # matches 0000 too: rename it away so every glob means 1-2
        (three_files / "0000.parquet").rename(three_files / "first.parquet.bak")
    result = fetch(str(three_files / pattern), 100, out, dask_scheduler=dask_scheduler)
    assert result.files_read == 2
    assert pq.read_table(out).column("label").to_pylist() == list(range(3, 15))


def test_fetch_single_file_source(three_files, tmp_path, dask_scheduler):
    out = tmp_path / "out.parquet"
    result = fetch(str(three_files / "0001.parquet"), 4, out, dask_scheduler=dask_scheduler)
    assert result.files_read == 1
    assert pq.read_table(out).column("label").to_pylist() == [3, 4, 5, 6]


def test_fetch_class_names_from_hf_metadata(tmp_path, dask_scheduler):
    names = ["cat", "dog", "fish"]
    source = make_parquet(
        tmp_path / "src.parquet", tagged_images(4), [0, 1, 2, 1], metadata=hf_metadata(names)
    )
    out = tmp_path / "out.parquet"
    result = fetch(str(source), 10, out, dask_scheduler=dask_scheduler)
    assert result.class_names == names
    # The names travel with the output so prepare can use them.
    assert class_names_from_metadata(pq.read_schema(out).metadata) == names


def test_fetch_class_names_none_without_metadata(three_files, tmp_path, dask_scheduler):
    out = tmp_path / "out.parquet"
    result = fetch(str(three_files), 3, out, dask_scheduler=dask_scheduler)
    assert result.class_names is None
    assert class_names_from_metadata(pq.read_schema(out).metadata) is None


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {},
        {b"huggingface": b"not json"},
        {b"huggingface": b'{"info": {"features": {"label": {"_type": "Value"}}}}'},
        {b"huggingface": b'{"info": {"features": {"label": {"names": "abc"}}}}'},
    ],
)
def test_class_names_from_metadata_tolerates_missing_or_odd_metadata(metadata):
    assert class_names_from_metadata(metadata) is None


def test_class_names_from_metadata_reads_classlabel_names():
    metadata = {key.encode(): value.encode() for key, value in hf_metadata(["a", "b"]).items()}
    assert class_names_from_metadata(metadata) == ["a", "b"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "hf://datasets/owner/name",
            "hf://datasets/owner/name@refs%2Fconvert%2Fparquet/default/train/*.parquet",
        ),
        (
            "hf://datasets/owner/name/",
            "hf://datasets/owner/name@refs%2Fconvert%2Fparquet/default/train/*.parquet",
        ),
        (
            "hf://datasets/owner/name@refs%2Fconvert%2Fparquet",
            "hf://datasets/owner/name@refs%2Fconvert%2Fparquet/default/train/*.parquet",
        ),
        ("hf://datasets/owner/name@main", "hf://datasets/owner/name@main/**/*.parquet"),
        # Explicit files, globs and revisions with a path are kept as given.
        (
            "hf://datasets/owner/name@refs%2Fconvert%2Fparquet/default/train/0000.parquet",
            "hf://datasets/owner/name@refs%2Fconvert%2Fparquet/default/train/0000.parquet",
        ),
        ("hf://datasets/owner/name/data/*.parquet", "hf://datasets/owner/name/data/*.parquet"),
        (
            "hf://datasets/owner/name@v1/data/x.parquet",
            "hf://datasets/owner/name@v1/data/x.parquet",
        ),
        ("data/*.parquet", "data/*.parquet"),
        ("s3://bucket/key.parquet", "s3://bucket/key.parquet"),
    ],
)
def test_expand_source(source, expected):
    assert expand_source(source) == expected


def test_builtin_digits(tmp_path):
    out = tmp_path / "out.parquet"
    result = fetch(BUILTIN_DIGITS, 100_000, out)
    table = pq.read_table(out)
    assert result.rows_fetched == table.num_rows == 1797
    assert result.class_names == [str(digit) for digit in range(10)]
    assert set(table.column("label").to_pylist()) == set(range(10))
    assert table.schema.field("image").type == IMAGE_TYPE


def test_builtin_digits_respects_rows(tmp_path):
    out = tmp_path / "out.parquet"
    result = fetch(BUILTIN_DIGITS, 600, out)  # crosses the 500-row groups
    assert result.rows_fetched == pq.read_metadata(out).num_rows == 600


def test_plain_binary_images_and_string_labels_are_normalised(tmp_path, dask_scheduler):
    images = tagged_images(3)
    source = make_parquet(
        tmp_path / "src.parquet", images, ["cat", "dog", "cat"], image_struct=False
    )
    out = tmp_path / "out.parquet"
    assert fetch(str(source), 10, out, dask_scheduler=dask_scheduler).rows_fetched == 3
    table = pq.read_table(out)
    assert table.schema.field("image").type == IMAGE_TYPE
    assert table.schema.field("label").type == pa.string()
    assert table.column("label").to_pylist() == ["cat", "dog", "cat"]
    assert [value["bytes"] for value in table.column("image").to_pylist()] == images
    assert _paths(table) == [None, None, None]


def test_null_images_stay_null(tmp_path, dask_scheduler):
    source = make_parquet(tmp_path / "src.parquet", tagged_images(3), [0, 1, 2], null_images=[1])
    out = tmp_path / "out.parquet"
    fetch(str(source), 10, out, dask_scheduler=dask_scheduler)
    images = pq.read_table(out).column("image").to_pylist()
    assert images[1] is None
    assert images[0]["bytes"] == tagged_images(1)[0]


def test_fetch_is_bit_identical_across_runs(three_files, tmp_path, dask_scheduler):
    digests = []
    for name in ("a.parquet", "b.parquet"):
        fetch(str(three_files), 11, tmp_path / name, dask_scheduler=dask_scheduler)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def _bad_table(tmp_path, columns: dict) -> str:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize(
    ("make_source", "expected"),
    [
        (
            lambda tmp: _bad_table(tmp, {"image": pa.array([png_bytes()]), "class": [1]}),
            "no 'label' column",
        ),
        (
            lambda tmp: _bad_table(tmp, {"picture": pa.array([png_bytes()]), "label": [1]}),
            "no 'image' column",
        ),
        (
            lambda tmp: _bad_table(tmp, {"image": ["not bytes"], "label": [1]}),
            "column 'image' is string",
        ),
        (
            lambda tmp: str(make_parquet(tmp / "empty.parquet", [], [])),
            "has no rows",
        ),
        (lambda tmp: str(tmp / "missing.parquet"), "matches no parquet file"),
        (lambda tmp: str(tmp / "missing" / "*.parquet"), "matches no parquet file"),
        (lambda tmp: str(tmp), "matches no parquet file"),  # a folder without parquet
        (lambda tmp: "foo://x", "unknown scheme 'foo'"),
        (lambda tmp: "http://127.0.0.1:9/x.parquet", "cannot reach source"),
    ],
    ids=[
        "no-label",
        "no-image",
        "image-not-binary",
        "empty",
        "missing-file",
        "missing-glob",
        "folder-without-parquet",
        "unknown-scheme",
        "unreachable-url",
    ],
)
def test_bad_sources_raise_one_sentence(tmp_path, make_source, expected, dask_scheduler):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    source = make_source(source_dir)
    out = tmp_path / "out.parquet"
    with pytest.raises(ImgrecError) as info:
        fetch(source, 10, out, dask_scheduler=dask_scheduler)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert not out.exists()


def test_struct_without_path_and_narrow_int_labels_are_normalised(tmp_path, dask_scheduler):
    images = tagged_images(2)
    bytes_only = pa.array([{"bytes": data} for data in images], pa.struct([("bytes", pa.binary())]))
    source = tmp_path / "src.parquet"
    pq.write_table(pa.table({"image": bytes_only, "label": pa.array([4, 2], pa.int32())}), source)
    out = tmp_path / "out.parquet"
    fetch(str(source), 10, out, dask_scheduler=dask_scheduler)
    table = pq.read_table(out)
    assert table.schema.field("image").type == IMAGE_TYPE
    assert table.schema.field("label").type == pa.int64()
    assert table.column("image").to_pylist() == [{"bytes": data, "path": None} for data in images]
    assert table.column("label").to_pylist() == [4, 2]


# --- Hostile and oddly shaped sources -------------------------------------------------------


def _random_blobs(count: int, size: int, seed: int = 0) -> list[bytes]:
    """Incompressible stand-ins for image bytes (fetch never decodes them)."""
    rng = np.random.default_rng(seed)
    return [rng.bytes(size) for _ in range(count)]


@pytest.mark.parametrize("small_group_rows", [1, 3, 8])
@pytest.mark.parametrize("rows", [1, 8, 20, 50])
def test_one_huge_row_group_and_small_groups_give_the_same_rows(
    tmp_path, monkeypatch, rows, small_group_rows, dask_scheduler
):
    monkeypatch.setattr(fetch_module, "OUT_ROW_GROUP_ROWS", 8)
    images, labels = _random_blobs(50, 300), list(range(50))
    one_group = make_parquet(tmp_path / "one/a.parquet", images, labels, row_group_size=50)
    small_groups = make_parquet(
        tmp_path / "small/a.parquet", images, labels, row_group_size=small_group_rows
    )
    assert pq.read_metadata(one_group).num_row_groups == 1
    for source, out in ((one_group, "from_one.parquet"), (small_groups, "from_small.parquet")):
        fetch(str(source), rows, tmp_path / out, dask_scheduler=dask_scheduler)
        table = pq.read_table(tmp_path / out)
        assert table.column("label").to_pylist() == list(range(min(rows, 50)))
        assert [value["bytes"] for value in table.column("image").to_pylist()] == images[:rows]


def _write_groups(path, group_rows: list[int], start: int = 0) -> None:
    """One parquet file whose row groups hold `group_rows` rows; labels count from `start`."""
    schema = pa.schema([("image", IMAGE_TYPE), ("label", pa.int64())])
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema) as writer:
        for rows in group_rows:
            labels = list(range(start, start + rows))
            image = pa.array([{"bytes": b"%d" % label} for label in labels], IMAGE_TYPE)
            writer.write_table(pa.table({"image": image, "label": labels}, schema))
            start += rows


@pytest.mark.parametrize(
    ("files", "rows", "expected"),
    [
        ([[10]], 100, [4, 4, 2]),
        ([[5, 5]], 100, [4, 1, 4, 1]),  # groups of 4+ rows keep their bounds
        ([[1] * 10], 100, [4, 4, 2]),  # smaller ones are gathered, up to 4 rows
        ([[2, 2, 5, 1, 1]], 100, [4, 4, 1, 2]),
        ([[3, 6, 3]], 100, [3, 4, 2, 3]),
        ([[1, 1], [1], [3, 1]], 100, [3, 4]),  # across files too
        ([[1, 0, 1], [0, 2]], 100, [4]),  # empty row groups are passed over
        ([[3, 2, 2, 4]], 100, [3, 4, 4]),  # a gathered group never splits a source group
        ([[5, 0, 5]], 100, [4, 1, 4, 1]),
        ([[1] * 10], 6, [4, 2]),
        ([[10]], 6, [4, 2]),
    ],
)
def test_output_row_groups(tmp_path, monkeypatch, files, rows, expected, dask_scheduler):
    monkeypatch.setattr(fetch_module, "OUT_ROW_GROUP_ROWS", 4)
    start = 0
    for index, group_rows in enumerate(files):
        _write_groups(tmp_path / f"src/{index}.parquet", group_rows, start)
        start += sum(group_rows)
    out = tmp_path / "out.parquet"
    fetch(str(tmp_path / "src"), rows, out, dask_scheduler=dask_scheduler)
    metadata = pq.read_metadata(out)
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == expected
    table = pq.read_table(out)
    assert table.column("label").to_pylist() == list(range(sum(expected)))
    assert [image["bytes"] for image in table.column("image").to_pylist()] == [
        b"%d" % label for label in range(sum(expected))
    ]


@pytest.mark.parametrize("max_task_rows", [2048, 1])  # a Dask task; streamed by the stage
def test_first_rows_of_a_huge_row_group_read_only_their_pages(tmp_path, monkeypatch, max_task_rows):
    # Memory follows what is read: taking 2 of 40 rows from one row group must not read the
    # group whole. Small pages (one row each) make the reader's granularity visible. The
    # local scheduler runs fetch's tasks in threads of this process, where the count is.
    monkeypatch.setattr(fetch_module, "READ_BUFFER_BYTES", 4096)
    monkeypatch.setattr(fetch_module, "MAX_TASK_ROWS", max_task_rows)
    images = _random_blobs(40, 20_000)
    table = pa.table(
        {
            "image": pa.array([{"bytes": data, "path": None} for data in images], IMAGE_TYPE),
            "label": pa.array(range(40), pa.int64()),
        }
    )
    source = tmp_path / "one_group.parquet"
    pq.write_table(table, source, write_batch_size=1, data_page_size=1, use_dictionary=False)
    assert pq.read_metadata(source).num_row_groups == 1
    bytes_read = []
    read = LocalFileOpener.read

    def counting_read(self, *args, **kwargs):
        data = read(self, *args, **kwargs)
        bytes_read.append(len(data))
        return data

    monkeypatch.setattr(LocalFileOpener, "read", counting_read)
    fetch(str(source), 2, tmp_path / "out.parquet", dask_scheduler="local")
    assert bytes_read, "the reads were not counted"
    assert pq.read_table(tmp_path / "out.parquet").column("label").to_pylist() == [0, 1]
    assert sum(bytes_read) < source.stat().st_size / 4


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_thousands_of_one_row_groups(tmp_path, dask_scheduler):
    count = 2000
    source = make_parquet(
        tmp_path / "src.parquet", tagged_images(count), list(range(count)), row_group_size=1
    )
    assert pq.read_metadata(source).num_row_groups == count
    for rows in (1500, count + 10):
        out = tmp_path / f"out{rows}.parquet"
        result = fetch(str(source), rows, out, dask_scheduler=dask_scheduler)
        assert result.rows_fetched == min(rows, count)
        table = pq.read_table(out)
        assert table.column("label").to_pylist() == list(range(min(rows, count)))
        assert [value["bytes"] for value in table.column("image").to_pylist()[-3:]] == (
            tagged_images(count)[min(rows, count) - 3 : min(rows, count)]
        )
        # One-row groups are gathered, not copied as thousands of one-row output groups.
        assert (
            table.num_rows / pq.read_metadata(out).num_row_groups
            > fetch_module.OUT_ROW_GROUP_ROWS / 2
        )


def _second_file(folder, write) -> None:
    make_parquet(folder / "a.parquet", tagged_images(3), [0, 1, 2])
    write(folder / "b.parquet")


def _write_columns(path, image: pa.Array, label: pa.Array) -> None:
    pq.write_table(pa.table({"image": image, "label": label}), path)


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (
            lambda path: make_parquet(path, tagged_images(2), ["cat", "dog"]),
            ["b.parquet: column 'label' is string, but ", "a.parquet has int64"],
        ),
        (
            lambda path: _write_columns(path, pa.array([1, 2]), pa.array([0, 1])),
            ["b.parquet: column 'image' is int64"],
        ),
        (
            lambda path: _write_columns(
                path, pa.array([[png_bytes()], [png_bytes()]]), pa.array([0, 1])
            ),
            ["b.parquet: column 'image' is list<"],
        ),
        (
            lambda path: _write_columns(
                path,
                pa.array(
                    [{"bytes": 1, "path": "x"}],
                    pa.struct([("bytes", pa.int64()), ("path", pa.string())]),
                ),
                pa.array([0]),
            ),
            ["b.parquet: column 'image' field 'bytes' is int64"],
        ),
        (
            lambda path: _write_columns(path, pa.array([png_bytes()]), pa.array([True])),
            ["b.parquet: column 'label' is bool"],
        ),
        (
            lambda path: path.write_bytes(b"PAR1 this is not parquet"),
            ["b.parquet is not a readable parquet file"],
        ),
        (
            lambda path: path.write_bytes(b""),
            ["b.parquet is not a readable parquet file"],
        ),
    ],
    ids=[
        "string-labels",
        "int-image",
        "list-image",
        "int-bytes",
        "bool-labels",
        "not-parquet",
        "zero-bytes",
    ],
)
def test_every_file_is_checked_before_a_row_is_written(tmp_path, write, expected, dask_scheduler):
    folder = tmp_path / "src"
    folder.mkdir()
    _second_file(folder, write)
    out = tmp_path / "out.parquet"
    with pytest.raises(ImgrecError) as info:  # one row: the first file alone could give it
        fetch(str(folder), 1, out, dask_scheduler=dask_scheduler)
    message = str(info.value)
    for part in expected:
        assert part in message
    assert "\n" not in message
    assert not out.exists()


def test_pandas_float_labels_become_class_ids_and_nan_no_label(tmp_path, dask_scheduler):
    # pandas writes an integer column with missing values as float64 with NaN.
    source = tmp_path / "src.parquet"
    _write_columns(source, pa.array(tagged_images(3)), pa.array([1.0, math.nan, 0.0]))
    fetch(str(source), 10, tmp_path / "out.parquet", dask_scheduler=dask_scheduler)
    label = pq.read_table(tmp_path / "out.parquet").column("label")
    assert label.type == pa.int64()
    assert label.to_pylist() == [1, None, 0]


def test_a_fractional_label_is_one_sentence(tmp_path, dask_scheduler):
    source = tmp_path / "src.parquet"
    _write_columns(source, pa.array(tagged_images(2)), pa.array([1.0, 0.5]))
    with pytest.raises(ImgrecError, match=r"cannot read source file .*src\.parquet"):
        fetch(str(source), 10, tmp_path / "out.parquet", dask_scheduler=dask_scheduler)
    assert not (tmp_path / "out.parquet").exists()


def test_string_labels_first_then_integer_labels_is_a_mismatch_too(tmp_path, dask_scheduler):
    make_parquet(tmp_path / "src/a.parquet", tagged_images(2), ["cat", "dog"])
    make_parquet(tmp_path / "src/b.parquet", tagged_images(2), [0, 1])
    with pytest.raises(ImgrecError, match=r"b\.parquet: column 'label' is int64, but .*a\.parquet"):
        fetch(str(tmp_path / "src"), 10, tmp_path / "out.parquet", dask_scheduler=dask_scheduler)


def test_an_unreadable_page_leaves_no_output(tmp_path, dask_scheduler):
    # The footer is sound, so the schema check passes; the second row group's pages are not.
    source = make_parquet(
        tmp_path / "src.parquet", _random_blobs(8, 300), list(range(8)), row_group_size=4
    )
    column = pq.read_metadata(source).row_group(1).column(0)
    data = bytearray(source.read_bytes())
    start = column.data_page_offset
    data[start : start + 64] = b"\xff" * 64
    source.write_bytes(bytes(data))
    out = tmp_path / "out.parquet"
    with pytest.raises(ImgrecError, match=r"cannot read source file .*src\.parquet after 4 rows"):
        fetch(str(source), 8, out, dask_scheduler=dask_scheduler)
    assert not out.exists()


def test_empty_files_beside_full_ones_are_skipped(tmp_path, dask_scheduler):
    make_parquet(tmp_path / "src/a.parquet", [], [])  # null-typed columns: nothing to check
    make_parquet(tmp_path / "src/b.parquet", tagged_images(3), [5, 6, 7])
    result = fetch(
        str(tmp_path / "src"), 10, tmp_path / "out.parquet", dask_scheduler=dask_scheduler
    )
    assert result.rows_fetched == 3
    assert pq.read_table(tmp_path / "out.parquet").column("label").to_pylist() == [5, 6, 7]


def test_categorical_labels_are_read_as_their_values(tmp_path, dask_scheduler):
    labels = pa.array(["cat", "dog", "cat"]).dictionary_encode()
    image = pa.array([{"bytes": data, "path": None} for data in tagged_images(3)], IMAGE_TYPE)
    pq.write_table(pa.table({"image": image, "label": labels}), tmp_path / "src.parquet")
    fetch(
        str(tmp_path / "src.parquet"), 10, tmp_path / "out.parquet", dask_scheduler=dask_scheduler
    )
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("label").type == pa.string()
    assert table.column("label").to_pylist() == ["cat", "dog", "cat"]


@pytest.mark.parametrize("source", ["builtin:mnist", "builtin:", "builtin:Digits"])
def test_unknown_builtin_lists_the_builtins(tmp_path, source, dask_scheduler):
    out = tmp_path / "out.parquet"
    with pytest.raises(ImgrecError) as info:
        fetch(source, 10, out, dask_scheduler=dask_scheduler)
    message = str(info.value)
    assert repr(source) in message
    assert f"the built-in sources are: {BUILTIN_DIGITS}." in message
    assert "\n" not in message
    assert not out.exists()


@pytest.mark.parametrize(("rows", "total"), [(4, 4), (15, 15), (40_000, 15)])
def test_progress_total_is_what_the_source_holds(
    three_files, tmp_path, monkeypatch, rows, total, dask_scheduler
):
    totals = []

    class RecordingBar:
        def __init__(self, *, total, **kwargs):
            totals.append(total)
            self.done = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, count):
            self.done += count

    monkeypatch.setattr(fetch_module, "tqdm", RecordingBar)
    fetch(str(three_files), rows, tmp_path / "out.parquet", dask_scheduler=dask_scheduler)
    assert totals == [total]


def test_an_unwritable_output_is_one_sentence(three_files, tmp_path, dask_scheduler):
    out = tmp_path / "missing" / "out.parquet"  # fetch writes into a folder the caller made
    with pytest.raises(ImgrecError, match=r"^cannot write .*out\.parquet: [^\n]*\.$"):
        fetch(str(three_files), 3, out, dask_scheduler=dask_scheduler)
    assert not out.exists()


def test_builtin_digits_keeps_its_row_groups(tmp_path):
    # data/raw.parquet's bytes depend on this layout: 500-row source groups, each cut at 256.
    out = tmp_path / "out.parquet"
    fetch(BUILTIN_DIGITS, 40_000, out)
    metadata = pq.read_metadata(out)
    sizes = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
    assert sizes == [256, 244] * 3 + [256, 41]


def test_fetch_gives_the_same_bytes_on_any_scheduler(tmp_path, dask_scheduler):
    """The default local cluster (one worker per core) and a running 2-worker one, on a
    source that mixes big row groups, small ones and several files."""
    _write_groups(tmp_path / "src/a.parquet", [300, 7, 9, 260, 1, 1])
    _write_groups(tmp_path / "src/b.parquet", [5] * 80, start=578)
    outs = [tmp_path / "local.parquet", tmp_path / "cluster.parquet"]
    for out, scheduler in zip(outs, ["local", dask_scheduler], strict=True):
        assert fetch(str(tmp_path / "src"), 900, out, dask_scheduler=scheduler).rows_fetched == 900
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert pq.read_table(outs[0]).column("label").to_pylist() == list(range(900))


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_an_unreachable_scheduler_is_one_sentence(three_files, tmp_path, monkeypatch):
    from imgrec.pipeline import dask_cluster

    monkeypatch.setattr(dask_cluster, "_CONNECT_TIMEOUT", "1s")  # distributed retries till then
    with pytest.raises(ImgrecError, match=r"cannot reach the Dask scheduler at .*127\.0\.0\.1:9"):
        fetch(str(three_files), 3, tmp_path / "out.parquet", dask_scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "out.parquet").exists()


def test_a_group_too_big_for_a_task_streams_through_the_stage(tmp_path, monkeypatch):
    """No task holds more than MAX_TASK_ROWS rows, and the file is the one tasks make."""
    monkeypatch.setattr(fetch_module, "OUT_ROW_GROUP_ROWS", 4)
    _write_groups(tmp_path / "src/a.parquet", [20, 3, 3, 9, 1])
    fs, paths = fetch_module.list_parquet_files(str(tmp_path / "src"))
    files = [fetch_module.read_footer(fs, path) for path in paths]
    task_rows = []
    read_task = fetch_module.read_task

    def counting_task(fs, task):
        task_rows.append(sum(part.rows for part in task))
        return read_task(fs, task)

    monkeypatch.setattr(fetch_module, "read_task", counting_task)
    monkeypatch.setattr(fetch_module, "MAX_TASK_ROWS", 8)
    tables = list(
        fetch_module._read(None, fs, fetch_module._tasks(files, 36))
    )  # None: tasks run here
    assert task_rows == [3, 3, 1]  # 20 and 9 streamed; 3 + 3 is more than 4 rows to gather
    assert pa.concat_tables(tables).column("label").to_pylist() == list(range(36))
    outs = [tmp_path / "tasks.parquet", tmp_path / "streamed.parquet"]
    for out, max_task_rows in zip(outs, [100, 8], strict=True):
        monkeypatch.setattr(fetch_module, "MAX_TASK_ROWS", max_task_rows)
        fetch(str(tmp_path / "src"), 36, out, dask_scheduler="local")
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_a_scheduler_without_workers_is_one_sentence(three_files, tmp_path, monkeypatch):
    from distributed import LocalCluster

    from imgrec.pipeline import dask_cluster

    monkeypatch.setattr(dask_cluster, "_WORKER_TIMEOUT", 1)
    out = tmp_path / "out.parquet"
    with (
        LocalCluster(n_workers=0, scheduler_kwargs=dask_cluster.NO_DASHBOARD) as empty,
        pytest.raises(ImgrecError, match=r"has had no worker for 1 s; start one"),
    ):
        fetch(str(three_files), 3, out, dask_scheduler=empty.scheduler_address)
    assert not out.exists()


def test_the_local_clusters_worker_processes_log_nothing_into_the_stages_output():
    # A worker's heartbeat that races the cluster's close logs a traceback at ERROR, from the
    # worker's process (dask/distributed#7105); a fresh process, for its stderr alone.
    probe = (
        "import logging; from imgrec.pipeline.dask_cluster import dask_client\n"
        "with dask_client('local', processes=True, tasks=1) as client:\n"
        "    client.run(lambda: logging.getLogger('distributed.worker').error('worker noise'))\n"
        "print('done')"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (0, "done\n", "")
