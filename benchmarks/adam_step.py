"""What the fused Adam step (`model.adam`) costs beside torch's default step and a training
step's forward and backward, on the pipeline's model, in alternating rounds in one process
(portable kernels, as the pipeline runs). Usage: `python benchmarks/adam_step.py [--img-size
64] [--rounds 5] [--steps 20]`; `--smoke` runs it tiny. RESULTS.md carries the reading.
"""

import argparse
import statistics
import time

# imgrec first: it applies the pipeline's kernels before torch loads
from imgrec.pipeline import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    from imgrec.training.model import CNNClassifier, ModelConfig, adam

    if args.smoke:
        args.img_size, args.batch_size, args.rounds, args.steps = 16, 4, 1, 2
    runtime.make_deterministic(2)
    model = CNNClassifier(ModelConfig(num_classes=10)).to(memory_format=torch.channels_last)
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    optimizers = {
        "fused (model.adam)": adam(model.parameters(), 1e-3),
        "torch default": torch.optim.Adam(model.parameters(), lr=1e-3),
    }

    def backward() -> None:
        model.zero_grad(set_to_none=False)
        F.cross_entropy(model.train()(x), y).backward()

    cases = {"forward + backward": backward, **{k: o.step for k, o in optimizers.items()}}
    backward()  # gradients for the optimizers to step on
    seconds = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                run()
            seconds[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(seconds["forward + backward"])
    print(f"| {args.img_size} px, batch {args.batch_size} | ms per call | / forward + backward |")
    print("|---|---|---|")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"| {name} | {median * 1000:.2f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
