"""imgrec beside the seed's loop (baseline.py), stage by stage, and portable vs native kernels.

Each side of each stage runs in a fresh Python process with IMGREC_KERNELS in its environment
and imgrec imported before numpy and torch; one Markdown table per stage is printed, and
benchmarks/RESULTS.md carries the reading. Usage: benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from imgrec.pipeline import kernels
from imgrec.recommender.embed import EmbedConfig
from imgrec.data.prepare import PrepareConfig
from imgrec.recommender.recommend import RecommendConfig
from imgrec.training.train import TrainConfig
from imgrec.data.prepare import prepare
from imgrec.data.prepared import load_prepared
from imgrec.data.fetch import fetch

HERE = Path(__file__).resolve().parent
STAGES = ("fetch", "prepare", "train", "embed", "recommend", "kernels")
FIXED = {"img_size": 128, "batch_size": 32}  # the seed's constants: baseline.py
SIZES = {  # flag: (default, with --smoke, what it sets)
    "rows": (40_000, 200, "catalog rows"),
    "rounds": (1, 1, "alternating rounds of each side-by-side stage"),
    "train_batches": (50, 2, "training batches per epoch, both sides"),
    "val_images": (1000, 32, "validation images, both sides"),
    "decode_images": (1000, 32, "images the seed's decode pass reads"),
    "embed_images": (6000, 32, "images imgrec embeds"),
    "seed_embed_images": (1000, 32, "images the seed embeds"),
    "queries": (200, 5, "single queries timed in recommend"),
    "kernel_rounds": (3, 1, "alternating rounds of native and portable kernels"),
    "kernel_batches": (15, 2, "training batches per kernels round"),
    "kernel_embed_images": (1024, 32, "images embedded per kernels round"),
}


def clocked(function, *args, **kwargs):
    """(what `function` returns, the seconds it took)."""
    start = time.perf_counter()
    return function(*args, **kwargs), time.perf_counter() - start


def timed(images: int, seconds: float) -> dict:
    return {"images": images, "seconds": seconds, "images/s": images / seconds}


def step_timer(batch_size: int):
    """Time optimizer steps from now on; the function returned gives images/s from the median
    time between steps, so warm-up and validation gaps drop out."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    ends = []
    register_optimizer_step_post_hook(lambda *_: ends.append(time.perf_counter()))
    return lambda: batch_size / statistics.median(np.diff(ends))


def seed_frame(cfg: dict):
    """The seed's DataFrame, loaded its way (its memory is the seed's); its literal
    `head(rows)` reads only Dask's first partition, so every partition may add here."""
    import dask.dataframe as dd

    return dd.read_parquet(cfg["source"]).head(cfg["rows"], npartitions=-1)


def imgrec_train(cfg: dict, batches: int, val_images: int, init: str | None, **overrides):
    """Train as the train stage does: (model, data, device, images/s, history, config)."""
    import torch

    from imgrec.pipeline import runtime
    from imgrec.training.model import CNNClassifier
    from imgrec.training.train import train

    config = TrainConfig.from_params(cfg["params"] | {"kernels": kernels.active(), **overrides})
    runtime.make_deterministic(config.num_threads)
    device, generator = runtime.pick_device(config.device), runtime.seed_everything(config.seed)
    data = load_prepared(cfg["prepared"])
    data = replace(data, val_index=data.val_index[:val_images])
    model = CNNClassifier(config.model_config(len(data.class_names)))
    if init:  # the seed's side starts from these weights
        torch.save(model.state_dict(), init)
    images_per_s = step_timer(config.batch_size)
    result = train(model, data, config, generator=generator, device=device, max_batches=batches)
    return model, data, device, images_per_s(), result.history, config


def fetch_imgrec(cfg: dict) -> dict:  # each side's clock includes its reader's imports
    scheduler = cfg["params"]["dask_scheduler"]
    fetched, seconds = clocked(
        fetch, cfg["source"], cfg["rows"], cfg["raw"], dask_scheduler=scheduler
    )
    return timed(fetched.rows_fetched, seconds)


def fetch_seed(cfg: dict) -> dict:
    frame, seconds = clocked(seed_frame, cfg)
    return timed(len(frame), seconds)


def prepare_imgrec(cfg: dict) -> dict:
    Path(cfg["prepared"]).mkdir(parents=True, exist_ok=True)
    config = PrepareConfig.from_params(cfg["params"])
    (counts, _), seconds = clocked(prepare, cfg["raw"], cfg["prepared"], config)
    return timed(counts["images"], seconds)


def prepare_seed(cfg: dict) -> dict:
    """The seed decodes in __getitem__, every epoch: one such pass, without a model."""
    import baseline
    from torch.utils.data import DataLoader

    dataset = baseline.ImageDataset(seed_frame(cfg).iloc[: cfg["decode_images"]])
    loader = DataLoader(dataset, batch_size=baseline.BATCH_SIZE)
    images, seconds = clocked(sum, (len(batch) for batch, _ in loader))
    return timed(images, seconds)


def train_imgrec(cfg: dict) -> dict:
    from imgrec.data.prepared import prepared_md5
    from imgrec.training.checkpoint import save_checkpoint

    batches, val_images = cfg["train_batches"], cfg["val_images"]
    model, data, _, rate, history, config = imgrec_train(cfg, batches, val_images, cfg["init"])
    save_checkpoint(
        cfg["model"], model.cpu(), data.class_names, data.img_size,
        train_config=config.identity(1), prepared_md5=prepared_md5(cfg["prepared"]),
    )  # fmt: skip
    return {"images/s": rate, "val accuracy": history[-1]["val_acc"]}


def train_seed(cfg: dict) -> dict:
    import baseline
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from imgrec.pipeline.runtime import pick_device

    config = TrainConfig.from_params(cfg["params"])
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    frame, data = seed_frame(cfg), load_prepared(cfg["prepared"])  # imgrec's split: same rows
    rows_train = data.row_ids[data.train_index]
    rows_val = data.row_ids[data.val_index[: cfg["val_images"]]]
    model = baseline.CNN_Classifier(len(data.class_names))  # draws on torch's RNG as imgrec's
    initial = torch.load(cfg["init"], weights_only=True)  # imgrec's initial weights, in order
    model.load_state_dict(dict(zip(model.state_dict(), initial.values(), strict=True)))
    # shuffle=True as the RandomSampler it makes, seeded as imgrec's: the same batches. The
    # validation loader's own generator keeps it off torch's RNG: the same dropout masks.
    sampler = RandomSampler(rows_train, generator=torch.Generator().manual_seed(config.seed))
    train_data = baseline.ImageDataset(frame.iloc[rows_train])
    train_loader = DataLoader(train_data, baseline.BATCH_SIZE, sampler=sampler)
    val_data = baseline.ImageDataset(frame.iloc[rows_val])
    val_loader = DataLoader(val_data, baseline.BATCH_SIZE, generator=torch.Generator())
    images_per_s, device = step_timer(baseline.BATCH_SIZE), pick_device(config.device)
    accuracies = baseline.fit(
        model, train_loader, val_loader, config.epochs, config.lr, device, cfg["train_batches"]
    )
    torch.save(model.cpu().state_dict(), cfg["seed_model"])
    return {"images/s": images_per_s(), "val accuracy": accuracies[-1]}


def embed_imgrec(cfg: dict) -> dict:
    from imgrec.pipeline import runtime
    from imgrec.training.checkpoint import load_checkpoint
    from imgrec.training.inference import embed

    config = EmbedConfig.from_params(cfg["params"])
    runtime.make_deterministic(config.num_threads)
    device, data = runtime.pick_device(config.device), load_prepared(cfg["prepared"])
    model = load_checkpoint(cfg["model"], device).model
    index = np.arange(min(cfg["embed_images"], len(data.labels)))
    embeddings, seconds = clocked(embed, model, data.images, index, device=device)  # (N, 512)
    np.save(cfg["embeddings"], embeddings)
    return timed(len(embeddings), seconds)


def embed_seed(cfg: dict) -> dict:
    import baseline
    import torch

    from imgrec.pipeline.runtime import pick_device

    config = EmbedConfig.from_params(cfg["params"])
    torch.set_num_threads(config.num_threads)
    frame, device = seed_frame(cfg).iloc[: cfg["seed_embed_images"]], pick_device(config.device)
    state = torch.load(cfg["seed_model"], weights_only=True)
    model = baseline.CNN_Classifier(num_classes=len(state["classifier.4.bias"]))
    model.load_state_dict(state)
    embeddings, seconds = clocked(baseline.extract_embeddings, model.to(device), frame, device)
    return timed(len(embeddings), seconds)


def recommend(cfg: dict, search_all, search_one) -> dict:
    """Both sides search the same catalog: imgrec's embeddings filled up to the catalog's size
    with stand-ins, each a real embedding with every entry scaled by 1 + N(0, 0.05) and
    renormalised. Scaling keeps the ReLU's zeros, so search costs what real embeddings cost."""
    from imgrec.recommender.recommend import retrieval_metrics

    real, labels = np.load(cfg["embeddings"]), load_prepared(cfg["prepared"]).labels
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(real), len(labels) - len(real))
    extra = real[picks] * rng.normal(1.0, 0.05, (len(picks), real.shape[1])).astype(np.float32)
    extra /= np.maximum(np.linalg.norm(extra, axis=1, keepdims=True), 1e-12)
    embeddings, labels = np.concatenate([real, extra]), labels[np.r_[: len(real), picks]]
    top_k = RecommendConfig.from_params(cfg["params"]).top_k
    neighbors, seconds = clocked(search_all, embeddings, top_k)  # (N, k)
    queries = rng.integers(0, len(labels), cfg["queries"])
    single = [clocked(search_one, embeddings, int(query), top_k)[1] for query in queries]
    return {
        "seconds, top-k of every item": seconds,
        "ms per single query (median)": 1000 * float(np.median(single)),
        **retrieval_metrics(labels[neighbors], labels),
    }


def recommend_imgrec(cfg: dict) -> dict:
    from imgrec.recommender.neighbors import make_index

    index = make_index(RecommendConfig.from_params(cfg["params"]))
    return recommend(
        cfg,
        lambda embeddings, k: index.fit(embeddings).search_catalog(k)[1],
        lambda embeddings, query, k: index.search(embeddings[query : query + 1], k + 1),
    )


def recommend_seed(cfg: dict) -> dict:
    import baseline

    return recommend(cfg, baseline.recommend_all, baseline.recommend_one)


def kernels_imgrec(cfg: dict) -> dict:
    """imgrec's training and embedding throughput, on the CPU, in this process's kernels."""
    from imgrec.training.inference import embed

    model, data, device, images_per_s, *_ = imgrec_train(
        cfg, cfg["kernel_batches"], FIXED["batch_size"], None,
        device="cpu", epochs=1, precision="fp32",
    )  # fmt: skip
    index = np.arange(min(cfg["kernel_embed_images"], len(data.labels)))
    embed(model, data.images, index[: FIXED["batch_size"]], device=device)  # warm-up
    _, seconds = clocked(embed, model, data.images, index, device=device)
    return {"train images/s": images_per_s, "embed images/s": len(index) / seconds}


def worker(function: str, config_path: str, out_path: str) -> None:
    kernels.check_portable()
    metrics = globals()[function](json.loads(Path(config_path).read_text()))
    # Peak RSS in kB: this process's own (VmHWM; its ru_maxrss would count the runner's from
    # before exec) or its largest child's (prepare's workers, forked from it).
    own = re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    metrics["peak RSS MB"] = max(int(own), children) / 1024
    Path(out_path).write_text(json.dumps({"metrics": metrics, "machine": kernels.machine_line()}))


def run_stage(stage: str, sides: list, rounds: int, cfg_path: Path) -> dict:
    """Every side once per round, in alternating order; {side: [each round's result]}."""
    results = {side: [] for side, _, _ in sides}
    for number in range(1, rounds + 1):
        for side, function, mode in sides if number % 2 else sides[::-1]:
            out = cfg_path.with_name(f"{stage}-{side}-{number}.json")
            command = [sys.executable, __file__, "--worker", function, str(cfg_path), str(out)]
            env = {**os.environ, kernels.MODE_VARIABLE: mode}
            with out.with_suffix(".log").open("w") as log:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            if code.returncode:
                tail = out.with_suffix(".log").read_text().splitlines()[-20:]
                sys.exit(f"{out.stem} failed (exit {code.returncode}):\n" + "\n".join(tail))
            results[side].append(json.loads(out.read_text()))
    return results


def print_table(title: str, results: dict) -> None:
    (a, runs_a), (b, runs_b) = results.items()
    print(f"\n## {title}\n\n| metric | {a} | {b} | ratio {a}/{b} | ratio per round |")
    print("|---|---|---|---|---|")
    for metric in runs_a[0]["metrics"]:
        values_a = [run["metrics"][metric] for run in runs_a]
        values_b = [run["metrics"][metric] for run in runs_b]
        ratios = [x / y if y else float("nan") for x, y in zip(values_a, values_b, strict=True)]
        medians = [f"{statistics.median(values):.5g}" for values in (values_a, values_b)]
        each = ", ".join(f"{ratio:.3f}" for ratio in ratios)
        print(f"| {metric} | {' | '.join(medians)} | {statistics.median(ratios):.3f} | {each} |")
    print()
    for side, runs in results.items():
        print("\n".join(f"- {side}: {line}" for line in sorted({r["machine"] for r in runs})))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="tiny sizes for every stage; flags still win")
    add("--stages", default=",".join(STAGES), help="comma-separated, run in the order given")
    add("-S", "--set", action="append", default=["epochs=2"], help="PARAM=VALUE, as dvc's -S")
    for name, (default, _, text) in SIZES.items():
        add(f"--{name.replace('_', '-')}", type=int, default=default, help=text)
    add("--data-dir", type=Path, default=HERE / "data", help="where catalogs are generated")
    add("--work-dir", type=Path, default=HERE / "work", help="where the stages write")
    args = parser.parse_args()
    if args.smoke:
        # One thread: a second gains nothing at these sizes, and the test suite runs two
        # smoke runs side by side on two cores.
        smoke = {name: sizes[1] for name, sizes in SIZES.items()}
        smoke |= {"set": ["epochs=1", "num_threads=1"]}
        args = parser.parse_args(namespace=argparse.Namespace(**smoke))
    if unknown := set(args.stages.split(",")) - set(STAGES):
        parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}; known: {', '.join(STAGES)}")

    import make_catalog

    catalog = args.data_dir / f"catalog-{args.rows}"
    if not make_catalog.catalog_is_ready(catalog, args.rows):
        print(f"generating a {args.rows}-row catalog ...", flush=True)
        make_catalog.make_catalog(catalog, args.rows)
    work = (args.work_dir / f"rows-{args.rows}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)} | FIXED
    params = yaml.safe_load((HERE.parent / "params.yaml").read_text()) | overrides
    cfg = vars(args) | {"params": params, "source": str(catalog.resolve() / "*.parquet")}
    outputs = ("raw.parquet", "prepared", "init.pt", "model.pt", "seed_model.pt", "embeddings.npy")
    cfg |= {name.split(".")[0]: str(work / name) for name in outputs}
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=2, default=str))

    started, mode = time.perf_counter(), params["kernels"]
    print(f"command: python benchmarks/run.py {shlex.join(sys.argv[1:])}")
    print(f"params: params.yaml with {', '.join(f'{k}={v}' for k, v in overrides.items())}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    for stage in args.stages.split(","):
        # imgrec first: its train writes the initial weights both sides start from.
        sides = [("imgrec", f"{stage}_imgrec", mode), ("seed", f"{stage}_seed", mode)]
        rounds, title = args.rounds, f"{stage}: imgrec and the seed, kernels {mode}"
        if stage == "kernels":
            sides = [(side, "kernels_imgrec", side) for side in ("native", "portable")]
            rounds, title = args.kernel_rounds, "kernels: imgrec on the CPU"
        results = run_stage(stage, sides, rounds, cfg_path)
        print_table(f"{title}, {rounds} alternating round(s)", results)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; wall time {minutes:.1f} min")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:])
    else:
        main()
