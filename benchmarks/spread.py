"""How far the headline metrics move when only the training's float path changes: the
pipeline's recipe (params.yaml) trained once per training seed on a fixed split, and each
run's val_accuracy, macro_f1, precision@k, map@k and best_epoch, then their mean, standard
deviation, min and max.

The `seed` param seeds both prepare's split and training; here prepare keeps params.yaml's
seed, so every run sees the same train and validation images, and only training's seed
(weight init, data order, dropout) varies: another run of the same data down another path of
float roundings, which is what another machine's kernels or a GPU give. One Markdown table
per dataset is printed; benchmarks/RESULTS.md carries the reading and reproducibility.yaml
the tolerances set from it. Usage: benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import os
import time
from dataclasses import replace

import numpy as np

import recipe
from imgrec.pipeline import kernels
from imgrec.training.train import TrainConfig

METRICS = ("val_accuracy", "macro_f1", "precision@k", "map@k", "best_epoch")


def run_dataset(dataset: str, args: argparse.Namespace, params: dict) -> None:
    data = recipe.prepared_dataset(dataset, args.rows, params, args.work_dir, args.data_dir)
    config = TrainConfig.from_params(params)
    print(f"\n## spread: {recipe.describe(dataset, data)}, split seed {params['seed']}, "
          f"{len(args.seeds)} training seeds\n")  # fmt: skip
    print("| training seed | " + " | ".join(METRICS) + " | epochs run | minutes |")
    print("|---" * (len(METRICS) + 3) + "|", flush=True)
    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        trained = recipe.train_as_the_stage(data, replace(config, seed=seed), args.max_batches)
        run = recipe.pipeline_metrics(trained, data, params)
        run["best_epoch"] = trained.result.best_epoch
        runs.append(run)
        cells = [f"{run[name]:.5f}" for name in METRICS[:-1]] + [str(run["best_epoch"])]
        minutes = (time.perf_counter() - start) / 60
        print(f"| {seed} | {' | '.join(cells)} | {trained.result.epochs_run} | {minutes:.1f} |",
              flush=True)  # fmt: skip
    summaries = {"mean": np.mean, "std": recipe.stdev, "min": min, "max": max}
    for name, summary in summaries.items():
        values = {metric: summary([run[metric] for run in runs]) for metric in METRICS}
        # 3 significant digits of a spread: what a tolerance is set from.
        cells = [f"{values[metric]:{'.3g' if name == 'std' else '.5f'}}" for metric in METRICS]
        if name != "std":
            cells[-1] = f"{values['best_epoch']:g}"
        print(f"| {name} | {' | '.join(cells)} | | |")
    print(f"\n(std: the sample standard deviation, n - 1; k = top_k = {params['top_k']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    recipe.add_recipe_arguments(parser)
    add("--seeds", default="42,43,44,45,46", help="training seeds, comma-separated")
    args = parser.parse_args()
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    params = recipe.read_params(args.set)
    print(f"params: params.yaml{''.join(f' -S {s}' for s in args.set)}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    for dataset in args.dataset or recipe.DATASETS:
        run_dataset(dataset, args, params)
    print(f"\n- {kernels.machine_line()}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
