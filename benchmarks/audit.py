"""What knowing the catalog costs: the fingerprint prepare now computes for every image
(pixel hash, phash, mean colour) beside the decode it already did, grouping a catalog's
fingerprints, and the audit stage on catalogs of vectors shaped like the pipeline's.

- `hash`: the synthetic benchmark catalog's first `--images` JPEGs, decoded to `--img-size`
  alone (prepare's work before) and decoded then fingerprinted (now), alternating for
  `--rounds` rounds in one process; then `duplicate_groups` over `--catalog-rows` fingerprints.
- `audit`: `audit.audit` (the stage's search, grouping, suspects and outliers) on
  `--audit-rows` vectors sampled like the committed catalog's (`indexes.sample`), per
  `--index`; and the copy calibration's forward passes (COPY_SAMPLE images, the seed's
  model at `--img-size`), which do not grow with the catalog.

Prints Markdown tables; benchmarks/RESULTS.md carries the reading. Usage: benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from imgrec.data import duplicates, images
from imgrec.pipeline import kernels, runtime
from imgrec.recommender.audit import COPY_SAMPLE, AuditConfig, audit, copy_similarity_threshold
from imgrec.recommender.catalog import Catalog, load_catalog
from imgrec.data.image_hashes import ImageHashes

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import indexes  # noqa: E402 - the benchmark's sampler of catalog-shaped vectors
import make_catalog  # noqa: E402


def clocked(function, *args):
    start = time.perf_counter()
    return function(*args), time.perf_counter() - start


def hash_table(blobs: list[bytes], img_size: int, rounds: int) -> list[str]:
    def decode_only():
        return [images.decode(blob, img_size) for blob in blobs]

    def decode_and_fingerprint():
        return [duplicates.fingerprint(images.decode(blob, img_size)) for blob in blobs]

    duplicates.fingerprint(images.decode(blobs[0], img_size))  # imports imagehash, scipy
    times = {"decode": [], "decode + fingerprint": []}
    for _ in range(rounds):
        times["decode"].append(clocked(decode_only)[1])
        times["decode + fingerprint"].append(clocked(decode_and_fingerprint)[1])
    before, after = (statistics.median(times[side]) for side in times)
    ratios = ", ".join(f"{b / a:.3f}" for a, b in zip(*times.values(), strict=True))
    per = 1e3 / len(blobs)
    return [
        f"## hash: {len(blobs)} JPEGs at {img_size} px, one process, {rounds} alternating round(s)",
        "",
        "| metric | decode (before) | decode + fingerprint (now) | ratio now/before | per round |",
        "|---|---|---|---|---|",
        f"| ms per image | {before * per:.3f} | {after * per:.3f} | {after / before:.3f} "
        f"| {ratios} |",
        f"| fingerprint alone, ms per image | | {(after - before) * per:.3f} | | |",
        "",
    ]


def grouping_table(blobs: list[bytes], img_size: int, rows: int) -> list[str]:
    """duplicate_groups over `rows` fingerprints: the real ones, repeated with one bit of
    the phash flipped at random positions per copy, so most rows are unrelated."""
    base = [duplicates.fingerprint(images.decode(blob, img_size)) for blob in blobs]
    rng = np.random.default_rng(0)
    prints = []
    for row in range(rows):
        print_ = base[row % len(base)]
        if row >= len(base):  # a fresh 64-bit hash: an unrelated image
            print_ = print_._replace(phash=int(rng.integers(0, 2**63)) * 2 + row % 2,
                                     pixel_hash=row.to_bytes(16, "big"))  # fmt: skip
        prints.append(print_)
    (_, found), seconds = clocked(duplicates.duplicate_groups, prints, 4)
    return [
        f"## grouping: {rows} fingerprints",
        "",
        "| rows | groups of 2+ | seconds |",
        "|---|---|---|",
        f"| {rows} | {len(found)} | {seconds:.2f} |",
        "",
    ]


def vectors_catalog(embeddings_dir: Path, prepared_dir: Path, rows: int) -> Catalog:
    """A catalog of `rows` embeddings and appearance vectors sampled like the committed
    one's, labels from the sampler, 20% validation; its images are never read."""
    committed = load_catalog(embeddings_dir, prepared_dir)
    embeddings, classes = indexes.sample(
        indexes.class_model(np.asarray(committed.embeddings), committed.labels), rows, 0
    )
    appearance, _ = indexes.sample(
        indexes.class_model(np.asarray(committed.appearance), committed.labels), rows, 1
    )
    return Catalog(
        embeddings=embeddings, appearance=appearance, row_ids=np.arange(rows), labels=classes,
        class_names=committed.class_names, images=np.zeros((rows, 1, 1, 3), np.uint8),
        val_index=np.arange(0, rows, 5), model_md5=committed.model_md5,
        no_close_match_below=committed.no_close_match_below,
    )  # fmt: skip


def audit_table(catalog: Catalog, specs: list[str]) -> list[str]:
    n = len(catalog.row_ids)
    prints = [
        duplicates.Fingerprint(i.to_bytes(16, "big"), i, (0.0, 0.0, 0.0), bytes(256))
        for i in range(n)
    ]
    hashes = ImageHashes(catalog.row_ids, prints, catalog.row_ids, 4)
    lines = [
        f"## audit: {n} vectors sampled like the committed catalog's",
        "",
        "| index | seconds | CPU seconds | near-duplicate groups | suspect labels | outliers |",
        "|---|---|---|---|---|---|",
    ]
    for spec in specs:
        name, settings = indexes.parse_spec(spec)
        config = AuditConfig(index=name, **settings)
        cpu = time.process_time()
        (report, _), seconds = clocked(audit, catalog, hashes, 0.999, config)
        lines.append(
            f"| {spec} | {seconds:.1f} | {time.process_time() - cpu:.1f} | "
            f"{len(report.duplicates)} | {len(report.suspect_labels)} | {len(report.outliers)} |"
        )
    return [*lines, ""]


def calibration_table(img_size: int, blobs: list[bytes]) -> list[str]:
    import torch

    from imgrec.training.inference import catalog_vectors, embed
    from imgrec.training.model import CNNClassifier, ModelConfig

    runtime.seed_everything(0)
    model = CNNClassifier(ModelConfig(num_classes=10)).eval()
    pixels = np.stack([images.decode(blob, img_size) for blob in blobs])
    embeddings, appearance = catalog_vectors(model, pixels, device=torch.device("cpu"))
    catalog = Catalog(embeddings, appearance, np.arange(len(pixels)), np.zeros(len(pixels), int),
                      ["x"], pixels, np.arange(0), "", 0.0)  # fmt: skip
    threshold, seconds = clocked(copy_similarity_threshold, catalog, lambda x: embed(model, x))
    return [
        f"## calibration: {len(pixels)} copies at {img_size} px, an untrained seed model",
        "",
        "| copies | seconds | cut (untrained: meaningless) |",
        "|---|---|---|",
        f"| {len(pixels)} | {seconds:.1f} | {threshold:.4f} |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--images", type=int, default=1000, help="JPEGs decoded per round (hash)")
    add("--img-size", type=int, default=128)
    add("--rounds", type=int, default=3)
    add("--copies", type=int, default=COPY_SAMPLE, help="images the calibration copies")
    add("--catalog-rows", type=int, default=40_000, help="fingerprints grouped")
    add("--audit-rows", type=int, default=40_000, help="vectors audited")
    add("--index", action="append", help="audit's index: exact, ivf, hnsw:hnsw_m=16,...")
    add("--embeddings", type=Path, default=Path("data/embeddings"))
    add("--prepared", type=Path, default=Path("data/prepared"))
    add("--catalog-dir", type=Path, help="where the synthetic JPEGs are (made on first use)")
    args = parser.parse_args()
    print(kernels.machine_line())
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.catalog_dir or Path(scratch) / "catalog"
        rows = max(args.images, args.copies)
        if not make_catalog.catalog_is_ready(folder, rows):
            make_catalog.make_catalog(folder, rows)
        blobs = [
            cell["bytes"]
            for file in sorted(folder.glob("*.parquet"))
            for cell in pq.read_table(file, columns=["image"]).column("image").to_pylist()
        ]
        blobs = blobs[:rows]  # fmt: skip
        lines = [*hash_table(blobs[: args.images], args.img_size, args.rounds),
                 *grouping_table(blobs[: args.images], args.img_size, args.catalog_rows),
                 *calibration_table(args.img_size, blobs[: args.copies])]  # fmt: skip
        catalog = vectors_catalog(args.embeddings, args.prepared, args.audit_rows)
        lines += audit_table(catalog, args.index or ["exact"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
