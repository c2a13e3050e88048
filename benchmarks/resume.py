"""What resumable training costs: imgrec's training with no saved state (`off`) beside the
same training saving its resumable state at every epoch end (`on`, checkpoint_every 0), and
the seconds of one save.

The sides alternate in one process, round after round, on random uint8 pixels shaped like
the 4,000-image benchmark catalog at 128 px (80% train: 100 batches of 32 an epoch); the ops
cost the same whatever the pixels. One Markdown table is printed, benchmarks/RESULTS.md
carries the reading. Usage: benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from imgrec.pipeline import kernels, runtime
from imgrec.training import train as train_module
from imgrec.training.train_state import Resume
from imgrec.training.train import TrainConfig

HERE = Path(__file__).resolve().parent
FIXED = {"img_size": 128, "batch_size": 32, "device": "cpu", "precision": "fp32"}
NUM_CLASSES = 10


def random_catalog(images: int, size: int, seed: int):
    from imgrec.data.prepared import Prepared

    rng = np.random.default_rng(seed)
    order = rng.permutation(images)
    cut = images * 4 // 5
    return Prepared(
        images=rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8),
        labels=rng.integers(0, NUM_CLASSES, images),
        row_ids=np.arange(images),
        train_index=np.sort(order[:cut]),
        val_index=np.sort(order[cut:]),
        class_names=[str(label) for label in range(NUM_CLASSES)],
        img_size=size,
    )


def run_side(side: str, data, config: TrainConfig, batches: int, state_dir: Path) -> float:
    """Train `config.epochs` epochs of `batches` batches; the wall seconds it took (main()
    times each save by wrapping `train.save_state`)."""
    import torch

    from imgrec.training.model import CNNClassifier
    from imgrec.training.train_state import RunIdentity

    generator = runtime.seed_everything(config.seed)
    model = CNNClassifier(config.model_config(NUM_CLASSES))
    resume = None
    if side == "on":
        identity = RunIdentity("benchmark", config.identity(1), "benchmark")
        resume = Resume(state_dir / "train-state.pt", identity)
        resume.finished()  # every round starts fresh
    start = time.perf_counter()
    train_module.train(model, data, config, generator=generator, device=torch.device("cpu"),
                   max_batches=batches, resume=resume)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000, help="catalog images (80%% train)")
    parser.add_argument("--batches", type=int, default=100, help="batches an epoch (100: all)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs a side trains each round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the sides")
    args = parser.parse_args()
    params = yaml.safe_load((HERE.parent / "params.yaml").read_text())
    run = {"epochs": args.epochs, "patience": args.epochs + 1, "kernels": kernels.active()}
    config = TrainConfig.from_params(params | FIXED | run)
    runtime.make_deterministic(config.num_threads)
    data = random_catalog(args.images, FIXED["img_size"], config.seed)

    saves, sizes = [], []
    real_save = train_module.save_state

    def timed_save(path, *rest):
        start = time.perf_counter()
        real_save(path, *rest)
        saves.append(time.perf_counter() - start)
        sizes.append(os.path.getsize(path) / 1e6)

    train_module.save_state = timed_save
    walls = {"off": [], "on": []}
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as state_dir:
        for round_ in range(args.rounds):
            for side in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                wall = run_side(side, data, config, args.batches, Path(state_dir))
                walls[side].append(wall)
                print(f"round {round_ + 1} {side}: {wall:.1f} s", flush=True)
    epoch_s = statistics.median(walls["off"]) / args.epochs
    save_s = statistics.median(saves)
    ratios = [on / off for on, off in zip(walls["on"], walls["off"], strict=True)]
    print(f"\n## resume: {args.images} images at 128 px, {args.batches} batches an epoch, "
          f"{args.epochs} epochs, {args.rounds} alternating round(s)\n")  # fmt: skip
    print("| metric | value |\n|---|---|")
    print(f"| seconds per saved state | {save_s:.3f} (median of {len(saves)}) |")
    print(f"| MB per saved state | {statistics.median(sizes):.1f} |")
    print(f"| seconds per epoch, no state saved | {epoch_s:.1f} |")
    print(f"| one save's share of an epoch | {save_s / epoch_s:.4f} |")
    print(f"| wall time on/off (epoch-end saves), per round | "
          f"{', '.join(f'{r:.4f}' for r in ratios)} |")  # fmt: skip
    print(f"\n- {kernels.machine_line()}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
