"""What deterministic training costs on the CPU: imgrec's training with torch's deterministic
algorithms off, on with torch's filling of uninitialized memory (torch's default), and on as
`runtime.make_deterministic` sets them.

Each side of each round is a fresh Python process, the sides' order rotating from round to
round; one Markdown table is printed, benchmarks/RESULTS.md carries the reading. The images are
random uint8 pixels: the ops cost the same whatever the pixels. Usage: benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from imgrec.pipeline import kernels
from imgrec.training.train import TrainConfig

HERE = Path(__file__).resolve().parent
SIDES = ("off", "on+fill", "on")  # on: as make_deterministic leaves torch
FIXED = {"img_size": 128, "batch_size": 32, "epochs": 1, "device": "cpu", "precision": "fp32"}
NUM_CLASSES = 10


def train_side(side: str, batches: int, params: dict) -> dict:
    """Train `batches` batches of random images; rates from the time between optimizer steps."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from imgrec.data.prepared import Prepared
    from imgrec.pipeline import runtime
    from imgrec.training.model import CNNClassifier
    from imgrec.training.train import train

    config = TrainConfig.from_params(params | FIXED | {"kernels": kernels.active()})
    runtime.make_deterministic(config.num_threads)
    if side == "off":
        torch.use_deterministic_algorithms(False)
    elif side == "on+fill":
        torch.utils.deterministic.fill_uninitialized_memory = True
    size, count = FIXED["img_size"], config.batch_size * batches
    rng = np.random.default_rng(config.seed)
    index = np.arange(count)
    data = Prepared(
        images=rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
        labels=rng.integers(0, NUM_CLASSES, count),
        row_ids=index,
        train_index=index,
        val_index=index[: config.batch_size],
        class_names=[str(label) for label in range(NUM_CLASSES)],
        img_size=size,
    )
    generator = runtime.seed_everything(config.seed)
    model = CNNClassifier(config.model_config(NUM_CLASSES))
    wall, cpu = [], []
    register_optimizer_step_post_hook(
        lambda *_: (wall.append(time.perf_counter()), cpu.append(time.process_time()))
    )
    device = runtime.pick_device(config.device)
    train(model, data, config, generator=generator, device=device, max_batches=batches)
    weights = hashlib.md5()
    for tensor in model.state_dict().values():
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        "metrics": {
            "train images/s": config.batch_size / statistics.median(np.diff(wall)),
            "CPU s per batch": statistics.median(np.diff(cpu)),
        },
        "weights md5": weights.hexdigest(),
        "machine": kernels.machine_line(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every side")
    parser.add_argument("--batches", type=int, default=12, help="training batches per process")
    parser.add_argument("-S", "--set", action="append", default=[], help="PARAM=VALUE")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    params = yaml.safe_load((HERE.parent / "params.yaml").read_text()) | overrides

    print(f"command: python benchmarks/determinism.py {shlex.join(sys.argv[1:])}")
    print(
        f"params: params.yaml with {', '.join(f'{k}={v}' for k, v in (overrides | FIXED).items())}"
    )
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    results = {side: [] for side in SIDES}
    for number in range(args.rounds):
        for side in SIDES[number % 3 :] + SIDES[: number % 3]:
            command = [sys.executable, __file__, "--worker", side, str(args.batches)]
            run = subprocess.run(
                command, input=json.dumps(params), capture_output=True, text=True, check=True
            )
            results[side].append(json.loads(run.stdout.splitlines()[-1]))

    base = SIDES[0]
    print(f"\n## determinism: imgrec's training on the CPU, {args.rounds} rotating round(s)\n")
    ratios = " | ".join(f"ratio {base}/{side}" for side in SIDES[1:])
    print(f"| metric | {' | '.join(SIDES)} | {ratios} | ratio per round |")
    print("|---" * (2 * len(SIDES)) + "|---|")
    for metric in results[base][0]["metrics"]:
        values = {side: [run["metrics"][metric] for run in results[side]] for side in SIDES}
        per_side = {
            side: [a / b for a, b in zip(values[base], values[side], strict=True)]
            for side in SIDES[1:]
        }
        medians = [f"{statistics.median(values[side]):.4g}" for side in SIDES]
        ratio_medians = [f"{statistics.median(per_side[side]):.3f}" for side in SIDES[1:]]
        each = "; ".join(", ".join(f"{r:.3f}" for r in rs) for rs in per_side.values())
        print(f"| {metric} | {' | '.join(medians + ratio_medians)} | {each} |")
    print()
    for side in SIDES:
        digests = sorted({run["weights md5"] for run in results[side]})
        print(f"- {side}: weights md5 {', '.join(digests)}")
    print(f"- machine: {results[base][0]['machine']}")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        kernels.check_portable()
        side, batches = sys.argv[2], int(sys.argv[3])
        print(json.dumps(train_side(side, batches, json.loads(sys.stdin.read()))))
    else:
        main()
