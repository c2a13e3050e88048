"""Does the audit find what was planted? The synthetic benchmark catalog with injected
copies (the same bytes, JPEG re-encodings, resized, PNG) and flipped labels, run through
the pipeline's own prepare, train (the stage script, params.yaml's defaults), embed and
audit; then: the share of injected pairs found in one duplicate group, injected pairs split
across train/validation, groups reported against groups injected, and the share of flipped
labels among the 200 most suspect.

Prints one Markdown table; benchmarks/RESULTS.md carries the reading. Usage:
benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from imgrec.pipeline import kernels

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import make_catalog  # noqa: E402

# kind -> (scale, format, JPEG quality); None: the same bytes
KINDS = {
    "the same bytes": None,
    "JPEG quality 60": (1, "JPEG", 60),
    "half the size": (0.5, "JPEG", 90),
    "PNG": (1, "PNG", None),
    "a third, quality 70": (1 / 3, "JPEG", 70),
}


def copy_of(blob: bytes, kind: str) -> bytes:
    if KINDS[kind] is None:
        return blob
    scale, fmt, quality = KINDS[kind]
    image = Image.open(io.BytesIO(blob)).convert("RGB")
    image = image.resize((int(image.width * scale), int(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if quality else {}))
    return buffer.getvalue()


def planted(catalog: Path, rows: int, copies: int, flips: int, seed: int, out: Path):
    """Write the catalog with `copies` injected copies appended and `flips` labels flipped;
    return (pairs (copy row, original row), flipped rows)."""
    table = pa.concat_tables(pq.read_table(f) for f in sorted(catalog.glob("*.parquet")))
    table = table.slice(0, rows)
    blobs = [cell["bytes"] for cell in table.column("image").to_pylist()]
    labels = table.column("label").to_pylist()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(rows, copies + flips, replace=False)
    originals, flipped = chosen[:copies], np.sort(chosen[copies:])
    pairs = []
    for number, original in enumerate(originals):
        pairs.append((len(blobs), int(original)))
        blobs.append(copy_of(blobs[original], list(KINDS)[number % len(KINDS)]))
        labels.append(labels[original])
    n_classes = len(make_catalog.CLASS_NAMES)
    for row in flipped:
        labels[row] = int((labels[row] + rng.integers(1, n_classes)) % n_classes)
    image = pa.array([{"bytes": b, "path": f"{i:06d}.jpg"} for i, b in enumerate(blobs)],
                     make_catalog.IMAGE_TYPE)  # fmt: skip
    pq.write_table(pa.table({"image": image, "label": pa.array(labels, pa.int64())},
                            schema=table.schema), out, row_group_size=100)  # fmt: skip
    return pairs, flipped.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rows", type=int, default=2000)
    add("--copies", type=int, default=100)
    add("--flips", type=int, default=100)
    add("--seed", type=int, default=0)
    add("--epochs", type=int, help="train for at most this many epochs (default: params.yaml)")
    add("--work-dir", type=Path, required=True)
    add("--prepare-only", action="store_true", help="the hash's numbers only: no training")
    args = parser.parse_args()
    print(kernels.machine_line())
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if args.epochs:
        params["epochs"] = args.epochs
    prepared, data, hashes, pairs, flipped = prepare_and_report(args, work, params)
    if not args.prepare_only:
        audit_and_report(work, params, prepared, data, hashes, pairs, flipped)


def prepare_and_report(args, work: Path, params: dict):
    """The planted catalog prepared: what prepare's hash finds, as table rows."""
    from imgrec.data.prepare import PrepareConfig, prepare
    from imgrec.data.prepared import load_prepared

    catalog_dir = work / f"catalog-{args.rows}"
    if not make_catalog.catalog_is_ready(catalog_dir, args.rows):
        make_catalog.make_catalog(catalog_dir, args.rows)
    raw = work / "raw.parquet"
    pairs, flipped = planted(catalog_dir, args.rows, args.copies, args.flips, args.seed, raw)

    (work / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = work / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)
    prepared.mkdir()
    counts, hashes = prepare(raw, prepared, PrepareConfig.from_params(params))
    data = load_prepared(prepared)
    by_hash = {int(r): int(g) for r, g in zip(hashes.row_ids, hashes.duplicate_groups,
                                              strict=True)}  # fmt: skip
    found_by_hash = [by_hash[a] == by_hash[b] for a, b in pairs]
    val = set(data.row_ids[data.val_index].tolist())
    across = sum((a in val) != (b in val) for a, b in pairs)
    print(f"## audit bar: {args.rows} rows + {args.copies} copies ({', '.join(KINDS)}, in turn), "
          f"{args.flips} flipped labels, img_size {params['img_size']}, near_duplicate_bits "
          f"{params['near_duplicate_bits']}")  # fmt: skip
    print()
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| injected pairs in one group by prepare's hash | {sum(found_by_hash)} of {len(pairs)} |"
    )
    for kind in KINDS:
        mine = [f for i, f in enumerate(found_by_hash) if list(KINDS)[i % len(KINDS)] == kind]
        print(f"| ... {kind} | {sum(mine)} of {len(mine)} |")
    print(f"| injected pairs across train/validation | {across} |")
    print(
        f"| duplicate groups by the hash / injected | {len(counts['duplicate_groups'])} / "
        f"{len(pairs)} |"
    )
    print(f"| duplicate rows counted by prepare | {counts['duplicate_rows']} |")
    return prepared, data, hashes, pairs, flipped


def audit_and_report(work: Path, params: dict, prepared, data, hashes, pairs, flipped) -> None:
    """Train, embed and audit the planted catalog: what the audit finds, as table rows."""
    from imgrec.recommender.audit import AuditConfig, audit, copy_similarity_threshold
    from imgrec.recommender.catalog import load_catalog, save_catalog
    from imgrec.recommender.embed import no_close_match_threshold
    from imgrec.training.checkpoint import checkpoint_md5, load_checkpoint
    from imgrec.training.inference import catalog_vectors, embed

    model_path = work / "model.pt"
    model_path.unlink(missing_ok=True)
    command = [sys.executable, str(ROOT / "stages" / "train.py"), "--prepared", str(prepared),
               "--model", str(model_path), "--live-dir", str(work / "live"), "--metrics",
               str(work / "train.json"), "--fingerprint", str(work / "kernel_fingerprint.txt"),
               "--state", str(work / "state.pt")]  # fmt: skip
    subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL)
    model = load_checkpoint(model_path).model
    embeddings, appearance = catalog_vectors(model, data.images)
    threshold = no_close_match_threshold(appearance, data.train_index, data.val_index)
    save_catalog(work / "embeddings", embeddings, appearance, data.row_ids,
                 checkpoint_md5(model_path), threshold)  # fmt: skip
    catalog = load_catalog(work / "embeddings", prepared)
    copy_cosine = copy_similarity_threshold(catalog, lambda x: embed(model, x))
    report, _ = audit(catalog, hashes, copy_cosine, AuditConfig.from_params(params))

    groups = report.duplicate_groups(catalog.row_ids)
    position = {int(r): p for p, r in enumerate(catalog.row_ids)}
    found = [groups[position[a]] == groups[position[b]] for a, b in pairs]
    top = {s.row_id for s in report.suspect_labels[:200]}
    best_epoch = json.loads((work / "train.json").read_text())["best_epoch"]
    print(
        f"| injected pairs in one group after the audit (best epoch {best_epoch}) | "
        f"{sum(found)} of {len(pairs)} |"
    )
    print(
        f"| duplicate groups after the audit / injected | {len(report.duplicates)} / {len(pairs)} |"
    )
    print(
        f"| flipped labels among the 200 most suspect | {len(top & set(flipped))} of "
        f"{len(flipped)} |"
    )
    print(f"| suspect labels reported | {len(report.suspect_labels)} |")


if __name__ == "__main__":
    main()
