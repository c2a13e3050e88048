"""Which convolution path trains how fast, and which operations' bits each one changes.

Candidates for kernels whose bits cannot depend on the CPU, each in a fresh process,
in alternating rounds: portable (oneDNN capped at AVX2: brgemm forward and backward
data, jit backward weights), oneDNN capped at AVX (direct jit forward, gemm-based
backward), ATen's own convolution (oneDNN and NNPACK off: im2col and MKL's sgemm), and
native (every library's own choice). Each row gives training images/s, its ratio to
portable, and the operations whose fingerprint (imgrec.fingerprint) differs from
portable's. Usage: `python benchmarks/conv_paths.py [--img-size 64] [--rounds 3]`;
`--smoke` runs it tiny. RESULTS.md carries the reading.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

# name: (IMGREC_KERNELS, extra environment, torch backend switches)
PATHS = {
    "portable (oneDNN AVX2)": ("portable", {}, {}),
    "oneDNN capped at AVX": ("portable", {"ONEDNN_MAX_CPU_ISA": "AVX"}, {}),
    "ATen convolution (no oneDNN, no NNPACK)": ("portable", {}, {"mkldnn": False}),
    "native": ("native", {}, {}),
}


def child(name: str, img_size: int, steps: int) -> None:
    """Runs in the measured process: set the path's variables, then load torch."""
    import imgrec  # noqa: F401 - applies IMGREC_KERNELS before numpy and torch load

    _, extra, switches = PATHS[name]
    os.environ.update(extra)  # after imgrec's caps, before torch loads: these win
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F

    from imgrec import fingerprint
    from imgrec.pipeline import runtime
    from imgrec.training.model import CNNClassifier, ModelConfig

    runtime.make_deterministic(2)
    if switches.get("mkldnn") is False:
        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)
    setup = fingerprint.Setup(img_size, 32, True, "fp32", 2, "cpu")
    found = fingerprint.compute(setup)
    torch.manual_seed(0)
    model = CNNClassifier(ModelConfig(num_classes=10)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((32, 3, img_size, img_size), dtype=np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(rng.integers(0, 10, 32))
    seconds = []
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        loss = F.cross_entropy(model.train()(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"images/s": 32 / statistics.median(seconds), "operations": found.operations}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps a round")
    parser.add_argument("--smoke", action="store_true", help="tiny: img 16, 1 round, 2 steps")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.img_size, args.rounds, args.steps = 16, 1, 2
    if args.child:
        return child(args.child, args.img_size, args.steps)
    runs: dict[str, list[dict]] = {name: [] for name in PATHS}
    for _ in range(args.rounds):
        for name, (mode, _, _) in PATHS.items():
            command = [sys.executable, __file__, "--child", name, "--img-size", str(args.img_size),
                       "--steps", str(args.steps)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=True,
                                  env=os.environ | {"IMGREC_KERNELS": mode})  # fmt: skip
            runs[name].append(json.loads(done.stdout.splitlines()[-1]))
    reference = runs["portable (oneDNN AVX2)"][0]["operations"]
    print(f"#### conv paths: training at {args.img_size} px, batch 32, 2 threads, "
          f"{args.rounds} alternating round(s) of {args.steps} steps\n")  # fmt: skip
    print("| path | images/s | ratio to portable | operations whose bits differ from portable |")
    print("|---|---|---|---|")
    portable = statistics.median(r["images/s"] for r in runs["portable (oneDNN AVX2)"])
    for name, results in runs.items():
        speed = statistics.median(r["images/s"] for r in results)
        operations = results[0]["operations"]
        differing = [op for op in reference if operations.get(op) != reference[op]]
        layers = sorted({op.split(".")[0] for op in differing if op.startswith("conv")})
        shown = (
            f"{len(differing)}: {', '.join(differing[:4])}{', ...' if len(differing) > 4 else ''}"
        )
        shown += f" (layers: {', '.join(layers)})" if layers else ""
        stable = all(r["operations"] == operations for r in results)
        print(f"| {name} | {speed:.1f} | {speed / portable:.2f} | {shown if differing else 'none'}"
              f"{'' if stable else ' (and not stable between rounds)'} |")  # fmt: skip


if __name__ == "__main__":
    main()
