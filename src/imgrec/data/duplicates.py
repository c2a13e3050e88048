"""What a duplicate is: the same decoded pixels (exact), or a copy (near): re-encoded,
resized, converted to another format or shifted in brightness. Model-free, so prepare can
keep every group on one side of the split before anything is trained; the audit adds what
only the model's vectors see.

A near-duplicate pair passes two tests. The perceptual hash (imagehash's `phash`, 64 bits:
the signs of the 8x8 lowest frequencies of a 32x32 grey DCT, against their median) of the
prepared images must be within `near_duplicate_bits`: cheap to search (FAISS), but on a
catalog of look-alikes (Fashion-MNIST's sneakers) thousands of distinct photos sit that
close. So each hash match is verified on the pixels: the 16x16 grey thumbnails, each
normalised to zero mean and unit contrast, must differ by at most THUMBNAIL_DISTANCE on
average, the mean colours' balance by COLOUR_LEVELS and their brightness by
BRIGHTNESS_LEVELS (a plain red image and a plain blue one hash alike).

Groups never chain: positions are taken in order, each one not yet in a group starts one
and takes in every later free position that is a verified pair with it. Every member is a
verified copy of its group's first image (the representative), whatever the catalog's size.
Mirror images are not copies: a flipped photo is another picture, and its hash differs.
"""

import hashlib
from typing import NamedTuple

import numpy as np

PHASH_BITS = 64
THUMBNAIL_SIDE = 16
# Most a copy's mean colour balance (each channel less the mean of the three) may differ,
# in levels of 255: copies re-encoded down to JPEG quality 30 and resized to a quarter
# moved the mean colour 3.4 at most.
COLOUR_LEVELS = 6.0
# Most a copy's mean brightness may differ, in levels of 255: a brightness shift is a copy.
BRIGHTNESS_LEVELS = 48.0
# Most two copies' normalised thumbnails differ, mean absolute difference in standard
# deviations. Calibrated on 40,000 Fashion-MNIST photos at img_size 32 with 100 injected
# copies of each kind (benchmarks/duplicates_scale.py): JPEG quality 70 reached 0.056,
# resized 0.050, brightness +30 0.032; of the 289,211 distinct pairs within 6 hash bits,
# 0.1% were closer than 0.063 and 1% closer than 0.092. At 0.07 every such copy is found
# and 0.04% of rows fall in groups whose labels disagree.
THUMBNAIL_DISTANCE = 0.07
_CONTRAST_FLOOR = 4.0  # levels: a near-flat thumbnail is not blown up into noise
_PAIRS_AT_ONCE = 8192  # pairs verified at once: bounds the memory of a dense hash match


class Fingerprint(NamedTuple):
    """What duplicate detection knows of one decoded image."""

    pixel_hash: bytes  # 16 bytes: equal only for equal pixels
    phash: int  # 64 bits
    colour: tuple[float, float, float]  # mean R, G, B
    thumbnail: bytes  # THUMBNAIL_SIDE**2 bytes: the grey image at 16x16, row by row


def fingerprint(pixels: np.ndarray) -> Fingerprint:
    """The fingerprint of a (S, S, 3) uint8 image."""
    import imagehash  # imports scipy: only where hashes are made
    from PIL import Image, ImageStat

    image = Image.fromarray(pixels)
    bits = imagehash.phash(image).hash.ravel()  # (64,) bool
    phash = int.from_bytes(np.packbits(bits).tobytes(), "big")
    colour = tuple(float(np.float32(c)) for c in ImageStat.Stat(image).mean)  # from histograms
    side = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    thumbnail = image.convert("L").resize(side, Image.Resampling.BOX).tobytes()
    return Fingerprint(pixel_hash(pixels), phash, colour, thumbnail)


def pixel_hash(pixels: np.ndarray) -> bytes:
    """16 bytes that differ for any two different decoded images."""
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).digest()


def _codes(phashes: np.ndarray) -> np.ndarray:
    """(N,) uint64 -> (N, 8) uint8, the layout FAISS's binary indexes take."""
    return np.ascontiguousarray(phashes, dtype=">u8").view(np.uint8).reshape(-1, 8)


def hash_matches(
    queries: np.ndarray, phashes: np.ndarray, max_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, position in `phashes`) pair within `max_bits` Hamming bits, with its
    bits, as three (M,) int64 arrays, by query (exhaustive: FAISS's binary flat index)."""
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # as neighbors.load_faiss
    import faiss  # not through neighbors: that imports torch, which prepare never loads

    index = faiss.IndexBinaryFlat(PHASH_BITS)
    index.add(_codes(phashes))
    # range_search keeps distances strictly below its radius.
    limits, distances, positions = index.range_search(_codes(queries), max_bits + 1)
    query_of = np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(limits).astype(np.int64))
    return query_of, positions.astype(np.int64), distances.astype(np.int64)


def group_pairs(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(n,) int64: each item's group, named by its first position; a group is a first
    position and every later free position paired with it (`first`, `second`: verified
    pairs, either way round). Taken in position order, so no group chains: a member is
    paired with its group's first position itself, not through another member."""
    a, b = np.minimum(first, second), np.maximum(first, second)
    keep = a != b
    a, b = a[keep], b[keep]
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    starts = np.searchsorted(a, np.arange(n + 1))  # pairs of each first position
    groups = np.arange(n, dtype=np.int64)
    taken = np.zeros(n, bool)  # in a group with an earlier position
    for position in np.unique(a):
        if taken[position]:
            continue
        later = b[starts[position] : starts[position + 1]]
        later = later[~taken[later]]
        groups[later] = position
        taken[later] = True
    return groups


def thumbnails(fingerprints: list[Fingerprint]) -> np.ndarray:
    """(N, THUMBNAIL_SIDE**2) uint8."""
    joined = b"".join(f.thumbnail for f in fingerprints)
    return np.frombuffer(joined, np.uint8).reshape(len(fingerprints), THUMBNAIL_SIDE**2)


def _normalised(thumbs: np.ndarray) -> np.ndarray:
    """(M, T) uint8 -> (M, T) float32 of zero mean and unit contrast, row by row."""
    values = thumbs.astype(np.float32)
    values -= values.mean(axis=1, keepdims=True)
    return values / np.maximum(values.std(axis=1, keepdims=True), _CONTRAST_FLOOR)


def _normalised_all(thumbs: np.ndarray) -> np.ndarray:
    """(N, T) uint8 -> (N, T) float16 `_normalised`, a bounded number of rows at a time."""
    values = np.empty(thumbs.shape, np.float16)
    for start in range(0, len(thumbs), _PAIRS_AT_ONCE):
        values[start : start + _PAIRS_AT_ONCE] = _normalised(thumbs[start : start + _PAIRS_AT_ONCE])
    return values


def thumbnail_distance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(M,) the mean absolute difference of pairs of normalised thumbnails ((M, T) uint8 each):
    0 for equal pictures and for a brightness or contrast shift of one."""
    return np.abs(_normalised(first) - _normalised(second)).mean(axis=1)


def verified(
    queries: list[Fingerprint], catalog: list[Fingerprint], query: np.ndarray, match: np.ndarray
) -> np.ndarray:
    """(M,) bool: which of the hash matches (`query`, `match`: positions) are copies by their
    pixels: thumbnails within THUMBNAIL_DISTANCE, colour balance within COLOUR_LEVELS and
    brightness within BRIGHTNESS_LEVELS."""
    query_colour, catalog_colour = colours(queries)[query], colours(catalog)[match]
    brightness = np.abs(query_colour.mean(axis=1) - catalog_colour.mean(axis=1))
    balance = query_colour - query_colour.mean(axis=1, keepdims=True)
    balance -= catalog_colour - catalog_colour.mean(axis=1, keepdims=True)
    alike = (np.abs(balance).max(axis=1) <= COLOUR_LEVELS) & (brightness <= BRIGHTNESS_LEVELS)
    # Each thumbnail normalised once, not once per pair: a dense catalog has dozens of hash
    # matches an image. float16 halves the memory and moves a distance by under 0.001.
    query_values = _normalised_all(thumbnails(queries))
    catalog_values = query_values if catalog is queries else _normalised_all(thumbnails(catalog))
    for start in range(0, len(query), _PAIRS_AT_ONCE):
        at = slice(start, start + _PAIRS_AT_ONCE)
        gap = query_values[query[at]].astype(np.float32) - catalog_values[match[at]]
        alike[at] &= np.abs(gap).mean(axis=1) <= THUMBNAIL_DISTANCE
    return alike


def near_matches(
    queries: list[Fingerprint], catalog: list[Fingerprint], max_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, catalog position) pair of copies: phashes within `max_bits` bits, then
    `verified` on the pixels; with each pair's bits."""
    query, match, bits = hash_matches(phashes(queries), phashes(catalog), max_bits)
    alike = verified(queries, catalog, query, match)
    return query[alike], match[alike], bits[alike]


def phashes(fingerprints: list[Fingerprint]) -> np.ndarray:
    return np.fromiter((f.phash for f in fingerprints), np.uint64, len(fingerprints))


def colours(fingerprints: list[Fingerprint]) -> np.ndarray:
    return np.array([f.colour for f in fingerprints], np.float32).reshape(-1, 3)


def members(groups: np.ndarray) -> list[np.ndarray]:
    """The positions of each group of two or more (`groups`: (N,) a group per position),
    ascending, groups in the order of their first position."""
    order = np.argsort(groups, kind="stable")
    runs = np.split(order, np.flatnonzero(np.diff(groups[order])) + 1)
    return sorted((run for run in runs if len(run) > 1), key=lambda run: run[0])


def duplicate_groups(
    fingerprints: list[Fingerprint], max_bits: int
) -> tuple[np.ndarray, list[dict]]:
    """Group images by equal pixels or verified copies (`near_matches`, `group_pairs`).

    Equal pixels have equal hashes and thumbnails, so exact duplicates are found with the
    near ones. Returns each image's group (the position of its group's first image, which
    every member is a verified copy of) and the groups of two or more: {"positions",
    "kind": "exact" (all pixels equal) | "near", "hash_bits": the most bits a member is
    from the first image}.
    """
    n = len(fingerprints)
    query, match, bits = near_matches(fingerprints, fingerprints, max_bits)
    once = match > query  # each pair once, no self-matches
    first, second, bits = query[once], match[once], bits[once]
    groups = group_pairs(n, first, second)
    widest = np.zeros(n, np.int64)  # per group: the most bits a member is from its first
    linked = groups[second] == first
    np.maximum.at(widest, first[linked], bits[linked])
    found = []
    for positions in members(groups):
        group = groups[positions[0]]
        exact = len({fingerprints[p].pixel_hash for p in positions}) == 1
        found.append({
            "positions": positions,
            "kind": "exact" if exact else "near",
            "hash_bits": int(widest[group]),
        })  # fmt: skip
    return groups, found


# What copies plausibly are: a photo uploaded a handful of times, and a catalog a few
# percent of whose rows are copies. Beyond either, the groups are more likely look-alikes
# that passed the tests (a catalog of near-identical renders) than copies.
PLAUSIBLE_GROUP_SIZE = 20
PLAUSIBLE_GROUPED_SHARE = 0.1


def group_sizes(groups: np.ndarray) -> tuple[int, int]:
    """(rows in groups of two or more, the largest such group's size: 0 if none) of (N,) groups."""
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    grouped = sizes[sizes > 1]
    return int(grouped.sum()), int(grouped.max(initial=0))


def implausible(groups: np.ndarray) -> str | None:
    """One line when the groups ((N,) a group per position) are larger, or hold a larger
    share of the rows, than copies plausibly do; None otherwise."""
    grouped, largest = group_sizes(groups)
    share = grouped / len(groups) if len(groups) else 0.0
    if largest <= PLAUSIBLE_GROUP_SIZE and share <= PLAUSIBLE_GROUPED_SHARE:
        return None
    return (
        f"duplicate groups look implausible for copies: the largest holds {largest} rows "
        f"(plausible: {PLAUSIBLE_GROUP_SIZE}) and {grouped} of {len(groups)} rows "
        f"({share:.1%}; plausible: {PLAUSIBLE_GROUPED_SHARE:.0%}) are in groups; check them "
        "(reports/prepare.json) before trusting the split or `duplicates: drop`"
    )


def collapse(
    scores: np.ndarray, positions: np.ndarray, groups: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of candidates (Q, K) best first, the first k whose group is not in the row's
    `excluded` groups ((Q, m), -1 pads) and not that of an earlier one listed; `groups`
    (N,): each catalog position's group. Returns (Q, k) scores and positions and a (Q,)
    mask of the rows that had k such candidates (the others need a wider search)."""
    candidate_groups = groups[positions]  # (Q, K)
    order = np.argsort(candidate_groups, axis=1, kind="stable")
    by_group = np.take_along_axis(candidate_groups, order, axis=1)
    first_sorted = np.ones_like(by_group, dtype=bool)
    first_sorted[:, 1:] = by_group[:, 1:] != by_group[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)  # first of its group in the row
    keep = first & ~(candidate_groups[:, :, None] == excluded[:, None, :]).any(axis=2)
    complete = keep.sum(axis=1) >= k
    picked = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept ones, in rank order
    return (
        np.take_along_axis(scores, picked, axis=1),
        np.take_along_axis(positions, picked, axis=1),
        complete,
    )


def collapsed_search(
    search, n_items: int, k: int, groups: np.ndarray, excluded: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`search(K)` -> (Q, K) scores and positions, best first; widened until every row has
    k items of distinct groups outside its excluded ones (`collapse`). The first search is
    `search(k)` itself, so a catalog without duplicates gets exactly the uncollapsed bits."""
    from imgrec.errors import ImgrecError

    width = min(k, n_items)
    while True:
        out_scores, out_positions, complete = collapse(*search(width), groups, excluded, k)
        if complete.all():
            return out_scores, out_positions
        if width == n_items:
            distinct = len(np.unique(groups))
            raise ImgrecError(
                f"top_k {k} is more than the catalog holds once its duplicates are collapsed "
                f"({distinct} distinct items); lower top_k or set collapse_duplicates: false."
            )
        width = min(2 * width, n_items)
