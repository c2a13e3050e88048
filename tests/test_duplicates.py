"""Duplicates on data built here: exact copies, re-encoded, resized and converted copies,
with known row ids: found, grouped, kept on one side of the split, dropped on request,
collapsed in results."""

import io

import numpy as np
import pytest
from conftest import make_parquet
from PIL import Image, ImageDraw

from imgrec.data import duplicates
from imgrec.data.image_hashes import load_image_hashes, save_image_hashes
from imgrec.data.prepare import PrepareConfig, prepare, stratified_split
from imgrec.data.prepared import load_prepared

IMG_SIZE = 64
DISTINCT = 48  # rows 0..47: unrelated drawings, labels alternate 0/1


def drawing(seed: int) -> Image.Image:
    """An unrelated picture per seed: shapes of random colours on a random background."""
    rng = np.random.default_rng(seed)
    size = tuple(int(v) for v in rng.integers(120, 200, size=2))
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        r = rng.uniform(10, 50)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - r, y - r, x + r, y + r * rng.uniform(0.5, 2)), fill=colour)
    return image


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def resized(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((int(image.width * factor), int(image.height * factor)))


# Copy row -> (the row it copies, how): rows 48.. of the built catalog.
COPIES = {
    48: (3, "the same bytes"),
    49: (3, "the same bytes"),  # a group of three
    50: (10, "JPEG quality 60"),
    51: (20, "half the size"),
    52: (30, "PNG"),
    53: (41, "a third the size, JPEG quality 70"),
}


@pytest.fixture(scope="module")
def catalog_bytes() -> list[bytes]:
    blobs = [encoded(drawing(seed), quality=90) for seed in range(DISTINCT)]
    pictures = [Image.open(io.BytesIO(blob)).convert("RGB") for blob in blobs]
    made = {
        "the same bytes": lambda row: blobs[row],
        "JPEG quality 60": lambda row: encoded(pictures[row], quality=60),
        "half the size": lambda row: encoded(resized(pictures[row], 0.5), quality=90),
        "PNG": lambda row: encoded(pictures[row], "PNG"),
        "a third the size, JPEG quality 70": lambda row: encoded(
            resized(pictures[row], 1 / 3), quality=70
        ),
    }
    return blobs + [made[how](row) for row, how in COPIES.values()]


def expected_groups() -> list[set[int]]:
    groups: dict[int, set[int]] = {}
    for copy, (row, _) in COPIES.items():
        groups.setdefault(row, {row}).add(copy)
    return sorted(groups.values(), key=min)


def labels_of(count: int) -> list[int]:
    labels = [row % 2 for row in range(count)]
    for copy, (row, _) in COPIES.items():
        if copy < count:
            labels[copy] = labels[row]
    return labels


def run_prepare(tmp_path, blobs, dask_scheduler, **overrides):
    parquet = make_parquet(tmp_path / "raw.parquet", blobs, labels_of(len(blobs)), 16)
    out = tmp_path / "prepared"
    out.mkdir()
    settings = {"img_size": IMG_SIZE, "val_fraction": 0.25, "seed": 0, "max_bad_fraction": 0.0,
                    "dask_scheduler": dask_scheduler}  # fmt: skip
    counts, hashes = prepare(parquet, out, PrepareConfig(**(settings | overrides)))
    return counts, hashes, load_prepared(out)


def test_prepare_groups_every_injected_copy_and_nothing_else(
    tmp_path, catalog_bytes, dask_scheduler
):
    counts, hashes, data = run_prepare(tmp_path, catalog_bytes, dask_scheduler)
    groups = counts["duplicate_groups"]
    assert [set(g["row_ids"]) for g in groups] == expected_groups()
    assert [g["kind"] for g in groups] == ["exact", "near", "near", "near", "near"]
    assert counts["duplicate_rows"] == len(COPIES)
    # Each group whole on one side of the split.
    in_val = np.isin(data.row_ids, data.row_ids[data.val_index])
    for group in groups:
        sides = {bool(in_val[data.positions(np.array([r]))[0]]) for r in group["row_ids"]}
        assert len(sides) == 1, group
    # The hashes file names every image's group by its first row.
    first_of = {copy: row for copy, (row, _) in COPIES.items()}
    assert hashes.duplicate_groups.tolist() == [first_of.get(r, r) for r in data.row_ids]


def test_drop_keeps_the_first_of_each_group(tmp_path, catalog_bytes, dask_scheduler):
    counts, hashes, data = run_prepare(tmp_path, catalog_bytes, dask_scheduler, duplicates="drop")
    assert data.row_ids.tolist() == list(range(DISTINCT))
    assert counts["images"] == DISTINCT and counts["duplicate_rows"] == len(COPIES)
    assert len(counts["duplicate_groups"]) == len(expected_groups())  # still reported
    assert hashes.duplicate_groups.tolist() == data.row_ids.tolist()


def test_without_duplicates_the_split_is_the_one_stratified_by_label_alone(
    tmp_path, catalog_bytes, dask_scheduler
):
    """A catalog with no duplicate changes no byte: the groups' split is the plain one."""
    counts, _, data = run_prepare(tmp_path, catalog_bytes[:DISTINCT], dask_scheduler)
    assert counts["duplicate_rows"] == 0 and counts["duplicate_groups"] == []
    from sklearn.model_selection import train_test_split

    positions = np.arange(DISTINCT)
    _, val = train_test_split(positions, test_size=12, stratify=data.labels, random_state=0)
    assert data.val_index.tolist() == sorted(val.tolist())


def test_the_split_keeps_a_large_group_on_one_side():
    labels = np.array([0, 1] * 50)
    groups = np.arange(100)
    groups[[0, 2, 4, 6, 8, 10, 12, 14]] = 0  # eight copies of item 0
    train, val = stratified_split(labels, 0.3, seed=1, groups=groups)
    assert sorted([*train, *val]) == list(range(100))
    members = {0, 2, 4, 6, 8, 10, 12, 14}
    assert members <= set(train.tolist()) or members <= set(val.tolist())


def test_a_plain_colour_is_no_copy_of_another():
    """phash sees grey structure only: plain red and plain blue hash alike."""
    red, blue = (np.full((32, 32, 3), c, np.uint8) for c in ((200, 0, 0), (0, 0, 200)))
    prints = [duplicates.fingerprint(red), duplicates.fingerprint(blue)]
    assert prints[0].phash == prints[1].phash
    groups, found = duplicates.duplicate_groups(prints, max_bits=4)
    assert found == [] and groups.tolist() == [0, 1]


def test_image_hashes_round_trip(tmp_path, catalog_bytes, dask_scheduler):
    _, hashes, _ = run_prepare(tmp_path, catalog_bytes, dask_scheduler)
    save_image_hashes(tmp_path / "hashes.parquet", hashes)
    loaded = load_image_hashes(tmp_path / "hashes.parquet")
    assert loaded.fingerprints == hashes.fingerprints
    assert loaded.near_duplicate_bits == 6
    assert np.array_equal(loaded.duplicate_groups, hashes.duplicate_groups)


def test_collapse_lists_no_duplicate_of_the_query_or_of_each_other():
    groups = np.array([0, 1, 1, 3, 3, 3, 6, 7])
    positions = np.array([[1, 2, 3, 4, 6, 5, 7], [0, 3, 4, 5, 6, 7, 1]])
    scores = -np.arange(7, dtype=np.float32)[None].repeat(2, axis=0)
    excluded = np.array([[1], [3]])  # the first query duplicates group 1, the second 3
    got_scores, got, complete = duplicates.collapse(scores, positions, groups, excluded, 3)
    assert got.tolist() == [[3, 6, 7], [0, 6, 7]]
    assert got_scores.tolist() == [[-2, -4, -6], [0, -4, -5]]
    assert complete.tolist() == [True, True]
    _, _, complete = duplicates.collapse(scores, positions, groups, excluded, 4)
    assert complete.tolist() == [False, True]
