"""Duplicate groups on real photos as the catalog grows (issue 36): Fashion-MNIST (28x28
grey product photos, Debian's `dataset-fashion-mnist`; 70,000), then scikit-learn's digits
(1,797) and, to reach 100,000, Fashion-MNIST photos turned a quarter (another picture, their
own class), shuffled once. Each size takes the first rows of that order and injects
`--per-kind` copies of each kind of as many distinct sources among them: the same bytes,
JPEG quality 70, twice the size, brightness +30 levels, and a crop (1 px off the top and
the left, 27 of 28 px). Every row goes through prepare's own code: PNG bytes,
`images.decode` at `--img-size`, `duplicates.fingerprint`, `duplicates.duplicate_groups`.

Per size: the share of injected pairs grouped with their source (copies; crops apart),
rows in groups, groups, the largest group, rows in groups whose labels disagree, the
seconds of decode + fingerprint and of grouping, and grouping's peak traced memory.
`--old` adds the transitive grouping this replaced (phash within the bits and mean colour
within 6 levels, connected components) at the sizes named. Prints a Markdown table;
benchmarks/RESULTS.md carries the reading.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import gzip
import io
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from imgrec.data import duplicates, images

KINDS = ("exact", "jpeg q70", "resized x2", "brightness +30", "crop 1 px")
POOL_ROWS = 100_000
COPY_KINDS = KINDS[:4]  # what the groups must find; crops are measured apart


def fashion_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(70000, 28, 28) uint8 photos and (70000,) labels, train then test."""

    def read(name: str, offset: int) -> np.ndarray:
        return np.frombuffer(gzip.open(folder / name).read(), np.uint8, offset=offset)

    photos = np.concatenate(
        [read(f"{part}-images-idx3-ubyte.gz", 16) for part in ("train", "t10k")]
    )
    labels = np.concatenate([read(f"{part}-labels-idx1-ubyte.gz", 8) for part in ("train", "t10k")])
    return photos.reshape(-1, 28, 28), labels.astype(np.int64)


def pool(folder: Path, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` grey (28, 28) photos and labels: Fashion-MNIST, digits, turned photos; shuffled."""
    from sklearn.datasets import load_digits

    photos, labels = fashion_mnist(folder)
    digits = load_digits()
    small = (digits.images * (255 / 16)).astype(np.uint8)
    grown = np.stack(
        [np.asarray(Image.fromarray(d).resize((28, 28), Image.BILINEAR)) for d in small]
    )
    turned = np.rot90(photos, axes=(1, 2))[: max(0, rows - len(photos) - len(grown))]
    n_turned = len(turned)
    photos = np.concatenate([photos, grown, turned])[:rows]
    labels = np.concatenate([labels, 10 + digits.target, 20 + labels[:n_turned]])[:rows]
    order = np.random.default_rng(seed).permutation(len(photos))
    return np.ascontiguousarray(photos[order]), labels[order]


def encoded(photo: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def copy_of(photo: np.ndarray, kind: str) -> bytes:
    if kind == "exact":
        return encoded(photo)
    if kind == "jpeg q70":
        return encoded(photo, "JPEG", quality=70)
    if kind == "resized x2":
        return encoded(np.asarray(Image.fromarray(photo).resize((56, 56), Image.BICUBIC)))
    if kind == "brightness +30":
        return encoded(np.clip(photo.astype(np.int64) + 30, 0, 255).astype(np.uint8))
    return encoded(photo[1:, 1:])  # crop 1 px


def old_groups(fingerprints: list[duplicates.Fingerprint], max_bits: int) -> np.ndarray:
    """The grouping issue 36 replaced: hash and mean colour only, connected components."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(fingerprints)
    hashes, colours = duplicates.phashes(fingerprints), duplicates.colours(fingerprints)
    query, match, _ = duplicates.hash_matches(hashes, hashes, max_bits)
    alike = np.abs(colours[query] - colours[match]).max(axis=1) <= 6.0
    links = coo_matrix((np.ones(alike.sum(), np.int8), (query[alike], match[alike])), shape=(n, n))
    return connected_components(links, directed=False)[1]


def measure(groups: np.ndarray, labels: np.ndarray, pairs: dict[str, np.ndarray]) -> dict:
    grouped, largest = duplicates.group_sizes(groups)
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    unique_pairs = np.unique(np.stack([inverse, labels]), axis=1)
    label_kinds = np.bincount(unique_pairs[0], minlength=len(sizes))
    mixed = int(sizes[label_kinds > 1].sum())
    found = {kind: float(np.mean(groups[p[:, 0]] == groups[p[:, 1]])) for kind, p in pairs.items()}
    copies = np.concatenate([pairs[kind] for kind in COPY_KINDS])
    return {
        "recall": float(np.mean(groups[copies[:, 0]] == groups[copies[:, 1]])),
        "crop": found["crop 1 px"],
        "grouped": grouped,
        "groups": int((sizes > 1).sum()),
        "largest": largest,
        "mixed": mixed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--fashion-mnist", type=Path, default=Path("/usr/share/datasets/fashion-mnist")
    )
    parser.add_argument("--sizes", default="3000,12000,40000,70000,100000")
    parser.add_argument("--per-kind", type=int, default=60)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--bits", type=int, default=6, help="near_duplicate_bits")
    parser.add_argument("--old", default="40000", help="sizes to also group the old way")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    old_sizes = {int(s) for s in args.old.split(",") if s}
    # One order for every run, so a size's rows do not depend on the largest size asked.
    photos, labels = pool(args.fashion_mnist, max(*sizes, POOL_ROWS), args.seed)
    print(
        "| rows | grouping | copies found | crops found | rows in groups | groups | largest "
        "| rows in label-mixed groups | decode + fingerprint s | grouping s | grouping peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        injected = args.per_kind * len(KINDS)
        base = size - injected
        rng = np.random.default_rng(args.seed + size)
        sources = rng.choice(base, injected, replace=False).reshape(len(KINDS), args.per_kind)
        blobs = [encoded(photo) for photo in photos[:base]]
        row_labels = list(labels[:base])
        pairs = {}
        for kind, kind_sources in zip(KINDS, sources, strict=True):
            pairs[kind] = np.stack([kind_sources, len(blobs) + np.arange(len(kind_sources))], 1)
            blobs += [copy_of(photos[s], kind) for s in kind_sources]
            row_labels += list(labels[kind_sources])
        row_labels = np.asarray(row_labels)
        start = time.perf_counter()
        prints = [duplicates.fingerprint(images.decode(blob, args.img_size)) for blob in blobs]
        fingerprint_seconds = time.perf_counter() - start
        runs = [("verified", lambda p: duplicates.duplicate_groups(p, args.bits)[0])]
        if size in old_sizes:
            runs.append(("old: transitive", lambda p: old_groups(p, args.bits)))
        for name, group in runs:
            tracemalloc.start()
            start = time.perf_counter()
            groups = group(prints)
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            m = measure(groups, row_labels, pairs)
            grouped, mixed = f"{m['grouped'] / size:.1%}", f"{m['mixed'] / size:.2%}"
            print(f"| {size:,} | {name} | {m['recall']:.3f} | {m['crop']:.2f} | {m['grouped']:,} "
                  f"({grouped}) | {m['groups']:,} | {m['largest']:,} | {m['mixed']:,} ({mixed}) "
                  f"| {fingerprint_seconds:.1f} | {seconds:.2f} | {peak:.0f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
