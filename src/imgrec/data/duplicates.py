"""What a duplicate is: the same decoded pixels (exact), or perceptual hashes a few bits
apart (near), grouped transitively. Model-free, so prepare can keep every group on one side
of the split before anything is trained; the audit adds what only the model's vectors see.

The perceptual hash is imagehash's `phash` (64 bits: the signs of the 8x8 lowest
frequencies of a 32x32 grey DCT, against their median) of the prepared image, so a copy
that was re-encoded, resized or converted to another format lands within a few bits of
its original while unrelated images sit far apart (measured in README, "Duplicates").
The hash sees grey structure only, so two near-duplicates must also agree in mean colour:
a plain red image and a plain blue one hash alike.
"""

import hashlib
from typing import NamedTuple

import numpy as np

PHASH_BITS = 64
# Most a near-duplicate's mean colour may differ, in levels of 255 per channel: copies
# re-encoded down to JPEG quality 30 and resized to a quarter moved it 3.4 at most.
COLOUR_LEVELS = 6.0


class Fingerprint(NamedTuple):
    """What duplicate detection knows of one decoded image."""

    pixel_hash: bytes  # 16 bytes: equal only for equal pixels
    phash: int  # 64 bits
    colour: tuple[float, float, float]  # mean R, G, B


def fingerprint(pixels: np.ndarray) -> Fingerprint:
    """The fingerprint of a (S, S, 3) uint8 image."""
    import imagehash  # imports scipy: only where hashes are made
    from PIL import Image, ImageStat

    image = Image.fromarray(pixels)
    bits = imagehash.phash(image).hash.ravel()  # (64,) bool
    phash = int.from_bytes(np.packbits(bits).tobytes(), "big")
    colour = tuple(float(np.float32(c)) for c in ImageStat.Stat(image).mean)  # from histograms
    return Fingerprint(pixel_hash(pixels), phash, colour)


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
    """(n,) int64: each item's group, named by its smallest member's position; pairs link
    their two items, and links chain (connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    links = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(n, n))
    _, component = connected_components(links, directed=False)
    smallest = np.full(component.max(initial=-1) + 1, n, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component]


def near_matches(
    queries: list[Fingerprint], catalog: list[Fingerprint], max_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, catalog position) pair of near-duplicates: phashes within `max_bits`
    bits and mean colours within COLOUR_LEVELS; with each pair's bits."""
    query, match, bits = hash_matches(phashes(queries), phashes(catalog), max_bits)
    colour_gap = np.abs(colours(queries)[query] - colours(catalog)[match]).max(axis=1)
    alike = colour_gap <= COLOUR_LEVELS
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
    """Group images by equal pixels or near-duplicate fingerprints (`near_matches`).

    Equal pixels have equal hashes, so exact duplicates are found with the near ones.
    Returns each image's group (the position of its group's first image) and the groups
    of two or more: {"positions", "kind": "exact" (all pixels equal) | "near",
    "hash_bits": the widest link that joined it}.
    """
    n = len(fingerprints)
    query, match, bits = near_matches(fingerprints, fingerprints, max_bits)
    once = match > query  # each pair once, no self-matches
    first, second, bits = query[once], match[once], bits[once]
    groups = group_pairs(n, first, second)
    widest = np.zeros(n, np.int64)  # per group: the most bits a link of it spans
    np.maximum.at(widest, groups[first], bits)
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
