"""fetch and its helpers on tiny local parquet datasets (no network: loopback at most)."""

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import hf_metadata, make_parquet, png_bytes, tagged_images

from imgrec import sources
from imgrec.errors import ImgrecError
from imgrec.sources import (
    BUILTIN_DIGITS,
    IMAGE_TYPE,
    class_names_from_metadata,
    expand_source,
    fetch,
)


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
    three_files, tmp_path, rows, expected
):
    out = tmp_path / "out.parquet"
    result = fetch(str(three_files), rows, out)
    table = pq.read_table(out)
    assert result.rows_fetched == expected
    assert result.files_read == 3
    assert table.num_rows == expected
    assert table.column("label").to_pylist() == list(range(expected))


def test_fetch_caps_the_rows_per_written_row_group(three_files, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "OUT_ROW_GROUP_ROWS", 2)
    out = tmp_path / "out.parquet"
    fetch(str(three_files), 15, out)
    metadata = pq.ParquetFile(out).metadata
    sizes = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
    assert max(sizes) == 2
    assert sum(sizes) == 15
    assert pq.read_table(out).column("label").to_pylist() == list(range(15))


def test_fetch_rows_match_the_source_bytes(three_files, tmp_path):
    out = tmp_path / "out.parquet"
    fetch(str(three_files), 9, out)
    images = pq.read_table(out).column("image").to_pylist()
    assert [image["bytes"] for image in images] == tagged_images(9)
    assert [image["path"] for image in images] == [f"img/{i}.png" for i in range(3)] + [
        f"img/{i}.png" for i in range(6)
    ]


def test_fetch_writes_hf_schema(three_files, tmp_path):
    out = tmp_path / "out.parquet"
    fetch(str(three_files), 4, out)
    schema = pq.read_schema(out)
    assert schema.names == ["image", "label"]
    assert schema.field("image").type == IMAGE_TYPE
    assert schema.field("label").type == pa.int64()


@pytest.mark.parametrize("pattern", ["000[12].parquet", "000?.parquet", "*[12].parquet"])
def test_fetch_glob_source(three_files, tmp_path, pattern):
    out = tmp_path / "out.parquet"
    if pattern == "000?.parquet":  # matches 0000 too: rename it away so every glob means 1-2
        (three_files / "0000.parquet").rename(three_files / "first.parquet.bak")
    result = fetch(str(three_files / pattern), 100, out)
    assert result.files_read == 2
    assert pq.read_table(out).column("label").to_pylist() == list(range(3, 15))


def test_fetch_single_file_source(three_files, tmp_path):
    out = tmp_path / "out.parquet"
    result = fetch(str(three_files / "0001.parquet"), 4, out)
    assert result.files_read == 1
    assert pq.read_table(out).column("label").to_pylist() == [3, 4, 5, 6]


def test_fetch_class_names_from_hf_metadata(tmp_path):
    names = ["cat", "dog", "fish"]
    source = make_parquet(
        tmp_path / "src.parquet", tagged_images(4), [0, 1, 2, 1], metadata=hf_metadata(names)
    )
    out = tmp_path / "out.parquet"
    result = fetch(str(source), 10, out)
    assert result.class_names == names
    # The names travel with the output so prepare can use them.
    assert class_names_from_metadata(pq.read_schema(out).metadata) == names


def test_fetch_class_names_none_without_metadata(three_files, tmp_path):
    out = tmp_path / "out.parquet"
    result = fetch(str(three_files), 3, out)
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


def test_plain_binary_images_and_string_labels_are_normalised(tmp_path):
    images = tagged_images(3)
    source = make_parquet(
        tmp_path / "src.parquet", images, ["cat", "dog", "cat"], image_struct=False
    )
    out = tmp_path / "out.parquet"
    assert fetch(str(source), 10, out).rows_fetched == 3
    table = pq.read_table(out)
    assert table.schema.field("image").type == IMAGE_TYPE
    assert table.schema.field("label").type == pa.string()
    assert table.column("label").to_pylist() == ["cat", "dog", "cat"]
    assert [value["bytes"] for value in table.column("image").to_pylist()] == images
    assert _paths(table) == [None, None, None]


def test_null_images_stay_null(tmp_path):
    source = make_parquet(tmp_path / "src.parquet", tagged_images(3), [0, 1, 2], null_images=[1])
    out = tmp_path / "out.parquet"
    fetch(str(source), 10, out)
    images = pq.read_table(out).column("image").to_pylist()
    assert images[1] is None
    assert images[0]["bytes"] == tagged_images(1)[0]


def test_fetch_is_bit_identical_across_runs(three_files, tmp_path):
    digests = []
    for name in ("a.parquet", "b.parquet"):
        fetch(str(three_files), 11, tmp_path / name)
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
def test_bad_sources_raise_one_sentence(tmp_path, make_source, expected):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    source = make_source(source_dir)
    out = tmp_path / "out.parquet"
    with pytest.raises(ImgrecError) as info:
        fetch(source, 10, out)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert not out.exists()


def test_struct_without_path_and_narrow_int_labels_are_normalised(tmp_path):
    images = tagged_images(2)
    bytes_only = pa.array([{"bytes": data} for data in images], pa.struct([("bytes", pa.binary())]))
    source = tmp_path / "src.parquet"
    pq.write_table(pa.table({"image": bytes_only, "label": pa.array([4, 2], pa.int32())}), source)
    out = tmp_path / "out.parquet"
    fetch(str(source), 10, out)
    table = pq.read_table(out)
    assert table.schema.field("image").type == IMAGE_TYPE
    assert table.schema.field("label").type == pa.int64()
    assert table.column("image").to_pylist() == [{"bytes": data, "path": None} for data in images]
    assert table.column("label").to_pylist() == [4, 2]
