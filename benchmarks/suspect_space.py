"""Which vectors judge labels better: a prepared dataset (default: the pipeline's digits)
with a share of its labels flipped, trained by the train stage script with params.yaml's
defaults, then every item's label judged by its nearest items' (`audit.suspect_labels`) in
the embedding space and in the appearance space, for a few neighbour counts.

Prints one Markdown table; benchmarks/RESULTS.md carries the reading. Usage:
python benchmarks/suspect_space.py --work-dir DIR [--prepared data/prepared --share 0.05]
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from imgrec.pipeline import kernels

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--share", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--epochs", type=int, help="at most this many (default: params.yaml)")
    parser.add_argument("--work-dir", type=Path, required=True)
    args = parser.parse_args()
    print(kernels.machine_line())
    import yaml

    from imgrec.data.prepared import load_prepared
    from imgrec.recommender.audit import suspect_labels
    from imgrec.recommender.neighbors import ExactIndex
    from imgrec.training.checkpoint import load_checkpoint
    from imgrec.training.inference import catalog_vectors

    work, prepared = args.work_dir, args.work_dir / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)
    shutil.copytree(args.prepared, prepared)
    labels = np.load(prepared / "labels.npy")
    n_classes = int(labels.max()) + 1
    rng = np.random.default_rng(7)
    flipped = rng.choice(len(labels), int(args.share * len(labels)), replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, n_classes, len(flipped))) % n_classes
    np.save(prepared / "labels.npy", labels)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["epochs"] = args.epochs or params["epochs"]
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    outputs = {"--model": "model.pt", "--live-dir": "live", "--metrics": "train.json",
               "--fingerprint": "kernel_fingerprint.txt", "--state": "state.pt"}  # fmt: skip
    command = [sys.executable, str(ROOT / "stages" / "train.py"), "--prepared", str(prepared)]
    command += [word for flag, name in outputs.items() for word in (flag, str(work / name))]
    subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL)
    data = load_prepared(prepared)
    spaces = dict(zip(("embedding", "appearance"),
                      catalog_vectors(load_checkpoint(work / "model.pt").model, data.images),
                      strict=True))  # fmt: skip
    print(f"## suspect space: {len(labels)} items, {len(flipped)} labels flipped")
    print()
    print("| space | neighbours | flipped among the 200 most suspect | flagged (score > 0.5) |")
    print("|---|---|---|---|")
    for name, vectors in spaces.items():
        for k in (5, 10, 20):
            scores, neighbors = ExactIndex().fit(vectors).search_catalog(k)
            score, _ = suspect_labels(data.labels, data.labels[neighbors], scores, n_classes)
            top = np.argsort(-score, kind="stable")[:200]
            print(f"| {name} | {k} | {np.isin(flipped, top).sum()} of {len(flipped)} | "
                  f"{(score > 0.5).sum()} |")  # fmt: skip


if __name__ == "__main__":
    main()
