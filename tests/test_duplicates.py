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
    assert counts["duplicate_rows_dropped"] == len(COPIES)
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


def prints_of(thumbnails: list[np.ndarray], phashes: list[int]) -> list[duplicates.Fingerprint]:
    """Fingerprints of grey pictures known only by their thumbnails and hashes."""
    return [
        duplicates.Fingerprint(bytes([i]) * 16, phash, (100.0,) * 3, thumb.tobytes())
        for i, (thumb, phash) in enumerate(zip(thumbnails, phashes, strict=True))
    ]


def test_a_chain_of_look_alikes_is_no_group():
    """A ~ B and B ~ C by hash and pixels, A and C apart: B joins A, and C stays alone."""
    rng = np.random.default_rng(0)
    side = duplicates.THUMBNAIL_SIDE**2
    x, y = rng.integers(0, 256, side), rng.integers(0, 256, side)
    a, b, c = (np.round((1 - t) * x + t * y).astype(np.uint8) for t in (0.0, 0.06, 0.12))
    distance = duplicates.thumbnail_distance
    assert distance(a[None], b[None])[0] <= duplicates.THUMBNAIL_DISTANCE  # the premise
    assert distance(b[None], c[None])[0] <= duplicates.THUMBNAIL_DISTANCE
    assert distance(a[None], c[None])[0] > duplicates.THUMBNAIL_DISTANCE
    prints = prints_of([a, b, c], [0, 0b1111, 0b11111111])  # A-B 4 bits, B-C 4, A-C 8
    groups, found = duplicates.duplicate_groups(prints, max_bits=6)
    assert groups.tolist() == [0, 0, 2]
    assert [g["positions"].tolist() for g in found] == [[0, 1]]
    # With C within the hash's reach of A too, the pixels still keep it out.
    groups, _ = duplicates.duplicate_groups(prints_of([a, b, c], [0, 1, 3]), max_bits=6)
    assert groups.tolist() == [0, 0, 2]


def test_a_hash_match_is_a_copy_only_if_the_pixels_agree():
    """Equal hashes, equal colour: the thumbnails decide; a brightness shift is a copy."""
    rng = np.random.default_rng(1)
    picture = rng.integers(40, 200, duplicates.THUMBNAIL_SIDE**2).astype(np.uint8)
    other = rng.permutation(picture)  # the same grey levels elsewhere
    brighter = picture + np.uint8(30)
    prints = prints_of([picture, other, brighter], [7, 7, 7])
    prints[2] = prints[2]._replace(colour=(130.0,) * 3)
    groups, _ = duplicates.duplicate_groups(prints, max_bits=0)
    assert groups.tolist() == [0, 1, 0]


def test_drop_keeps_a_look_alike_that_is_no_copy(tmp_path, dask_scheduler):
    """Row 12 is row 2 with a spot painted on: 6 hash bits and 4 colour levels from it (the
    old rule grouped them), not a copy. Row 13 is row 5's bytes: the one row dropped."""
    pictures = [drawing(seed) for seed in range(12)]
    spotted = pictures[2].copy()
    ImageDraw.Draw(spotted).ellipse((spotted.width * 0.4, spotted.height * 0.4,
                                     spotted.width * 0.4 + 24, spotted.height * 0.4 + 24),
                                    fill=(0, 0, 0))  # fmt: skip
    blobs = [encoded(p, quality=90) for p in pictures]
    blobs += [encoded(spotted, quality=90), blobs[5]]
    labels = [row % 2 for row in range(12)] + [0, 1]
    parquet = make_parquet(tmp_path / "raw.parquet", blobs, labels, 16)
    out = tmp_path / "prepared"
    out.mkdir()
    config = PrepareConfig(img_size=IMG_SIZE, val_fraction=0.25, seed=0, max_bad_fraction=0.0,
                           dask_scheduler=dask_scheduler, duplicates="drop")  # fmt: skip
    counts, _ = prepare(parquet, out, config)
    assert [g["row_ids"] for g in counts["duplicate_groups"]] == [[5, 13]]
    assert counts["duplicate_rows_dropped"] == 1
    assert load_prepared(out).row_ids.tolist() == [*range(13)]


def test_implausible_groups_are_one_line_naming_both_numbers():
    assert duplicates.implausible(np.array([0, 0, *range(2, 20)])) is None  # 2 in 20 rows
    big = np.zeros(100, np.int64)
    big[30:] = np.arange(30, 100)  # one group of 30 in 100 rows
    line = duplicates.implausible(big)
    assert "30 rows" in line and "30 of 100 rows (30.0%" in line and "\n" not in line
    many_pairs = np.arange(100) // 2 * 2  # 50 pairs: every row in a group
    assert "100 of 100 rows" in duplicates.implausible(many_pairs)


def test_prepare_warns_before_the_split_when_a_group_is_implausible(
    tmp_path, catalog_bytes, dask_scheduler, caplog
):
    too_many = duplicates.PLAUSIBLE_GROUP_SIZE + 5
    blobs = catalog_bytes[:DISTINCT] + [catalog_bytes[0]] * too_many
    with caplog.at_level("WARNING"):
        counts, _, _ = run_prepare(tmp_path, blobs, dask_scheduler)
    warnings = [r.getMessage() for r in caplog.records if "implausible" in r.getMessage()]
    assert len(warnings) == 1 and f"the largest holds {too_many + 1} rows" in warnings[0]
    assert counts["duplicate_rows_dropped"] == 0
