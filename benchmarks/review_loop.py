"""The review loop end to end (issue 32): the digits with a share of labels flipped, as a
local parquet `source`, through `dvc repro` in a scratch clone of the project; then every
suggestion of the audit accepted with `python -m imgrec review accept-all`, and `dvc repro`
again, which applies the corrections in prepare and retrains.

Prints one Markdown table: flips suggested, flips fixed (relabelled to their true label),
correct labels wrongly changed, and per run the metrics `dvc metrics show` gives (val accuracy
against the labels of that run, which after the review are corrected too) and the val
accuracy against the true labels (the honest one: both runs' models scored on the truth).
benchmarks/RESULTS.md carries the reading. Usage:
python benchmarks/review_loop.py --work-dir DIR [--share 0.05] [-S epochs=1]
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from imgrec.pipeline import kernels

ROOT = Path(__file__).resolve().parents[1]


def flipped_digits(path: Path, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The built-in digits as parquet at `path`, `share` of their labels flipped to another
    digit; returns the true labels (by row) and the flipped rows."""
    from imgrec.data.fetch import digits_table

    table = digits_table()
    truth = table.column("label").to_numpy()
    rng = np.random.default_rng(seed)
    flips = np.sort(rng.choice(len(truth), round(share * len(truth)), replace=False))
    labels = truth.copy()
    labels[flips] = (labels[flips] + rng.integers(1, 10, len(flips))) % 10
    table = table.set_column(1, "label", pa.array(labels, pa.int64()))
    pq.write_table(table, path, row_group_size=500)
    return truth, flips


def run(command: list[str], project: Path) -> float:
    env = os.environ | {"PYTHONPATH": str(project / "src")}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def true_accuracy(project: Path, truth: np.ndarray) -> float:
    """The model's validation accuracy against the digits' true labels."""
    from imgrec.data.prepared import load_prepared
    from imgrec.training.checkpoint import load_checkpoint
    from imgrec.training.inference import predict_logits

    data = load_prepared(project / "data/prepared")
    model = load_checkpoint(project / "models/model.pt").model
    logits = predict_logits(model, data.images, data.val_index)
    names = np.asarray(data.class_names)[logits.argmax(1).numpy()]
    return float((names.astype(int) == truth[data.row_ids[data.val_index]]).mean())


def metrics(project: Path) -> dict:
    """The headline metrics, the audit's counts and prepare's corrections, flat."""
    found = {}
    for name in ("metrics/evaluate.json", "metrics/recommend.json", "reports/audit_counts.json"):
        found |= json.loads((project / name).read_text())
    corrections = json.loads((project / "reports/prepare.json").read_text())["corrections"]
    return found | {f"corrections_{key}": value for key, value in corrections.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--share", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--seed", type=int, default=7, help="which labels are flipped")
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        metavar="NAME=VALUE", help="a params.yaml value")  # fmt: skip
    args = parser.parse_args()
    print(kernels.machine_line())
    work = args.work_dir.resolve()
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    truth, flips = flipped_digits(work / "digits_flipped.parquet", args.share, args.seed)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["source"] = str(work / "digits_flipped.parquet")
    for item in args.overrides:
        name, _, value = item.partition("=")
        params[name] = yaml.safe_load(value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    seconds = {"before": run(["dvc", "repro"], project)}
    before, accuracy = metrics(project), {"before": true_accuracy(project, truth)}
    report = json.loads((project / "reports/audit.json").read_text())
    suggested = {s["row_id"]: s["suggested"] for s in report["suspect_labels"]}
    run([sys.executable, "-m", "imgrec", "review", "accept-all"], project)
    seconds["after"] = run(["dvc", "repro"], project)
    after, accuracy["after"] = metrics(project), true_accuracy(project, truth)

    flipped = set(flips.tolist())
    fixed = sum(int(label) == truth[row] for row, label in suggested.items() if row in flipped)
    broken = sum(row not in flipped for row in suggested)
    print(f"\n## review loop: the digits ({len(truth)} rows), {len(flips)} labels flipped "
          f"({args.share:.0%}), every suggestion accepted\n")  # fmt: skip
    print("| measure | before review | after review |")
    print("|---|---|---|")
    print(f"| flipped labels the audit suggests fixing | {len(flipped & set(suggested))} of "
          f"{len(flips)} ({len(suggested)} suggestions) | |")  # fmt: skip
    print(f"| flips fixed (relabelled to the true digit) | | {fixed} of {len(flips)} |")
    print(f"| correct labels changed to a wrong one | | {broken} |")
    for key in ("corrections_applied", "corrections_skipped", "val_accuracy", "macro_f1",
                "precision@k", "suspect_labels", "split_leaks"):  # fmt: skip
        print(f"| {key} | {before.get(key, '')} | {after.get(key, '')} |")
    print(f"| val accuracy on the true labels | {accuracy['before']:.4f} "
          f"| {accuracy['after']:.4f} |")  # fmt: skip
    print(f"| `dvc repro` seconds | {seconds['before']:.0f} | {seconds['after']:.0f} |")


if __name__ == "__main__":
    main()
