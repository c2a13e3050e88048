# size: past 450 lines: one self-contained script a user carries to a GPU machine, its checks
# (code paths, determinism, resume, incremental embed, speed table) in one run and one report.
"""imgrec on a CUDA GPU, checked in one command (issue 28): every stage's model code path,
determinism, resume, the incremental embed, and the speed table beside the seed's loop.

    python benchmarks/gpu_check.py --out gpu-check        # a CUDA machine; under 4 minutes
    python benchmarks/gpu_check.py --small --out /tmp/gc  # a CPU dry run (tests run it)

Needs torch, numpy, Pillow, scikit-learn, tqdm and pyarrow (and says which are missing, in one
line); no network and none of dvc, dask, faiss, simplejpeg, PyYAML, matplotlib. The seed's
loop runs as written (benchmarks/baseline.py) where pandas and torchvision are installed, else
as an equivalent PIL loop (the table says which). The images are synthetic, drawn with NumPy
from a fixed seed: 4,000 distinct, tiled to 40,000 at 128 px. Writes gpu_check.json and
gpu_check.md to --out; exits 1 if a check fails. Sections past --budget seconds are skipped.
"""

import argparse
import hashlib
import importlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# isort: off
import imgrec  # noqa: F401 - first: it picks the CPU kernels before numpy and torch load

# isort: on


def require(needs: dict[str, str]) -> None:
    """Exit naming every package missing here (module: its pip name): a GPU machine may have
    no package index, so a user carries those wheels, all at once."""
    missing = []
    for module, wheel in needs.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(wheel)
    if missing:
        sys.exit(f"gpu_check needs {', '.join(missing)}: pip install {' '.join(missing)}.")


require({"torch": "torch", "numpy": "numpy", "PIL": "Pillow", "sklearn": "scikit-learn",
         "tqdm": "tqdm", "pyarrow": "pyarrow"})  # fmt: skip
import numpy as np
import torch
from torch import nn

from imgrec.data.prepared import Prepared
from imgrec.errors import Stopped
from imgrec.pipeline import runtime
from imgrec.training.model import CNNClassifier
from imgrec.training.train import TrainConfig, train
from imgrec.training.train_state import Resume, RunIdentity

CLASSES = 10
PARAMS = {
    "batch_size": 32, "epochs": 1, "lr": 0.001, "patience": 5, "lr_factor": 0.1,
    "lr_patience": 3, "dropout": 0.5, "augment": False, "seed": 42, "channels_last": True,
    "precision": "fp32", "checkpoint_every": 0, "nproc": 1, "device": "auto",
    "num_threads": 2, "kernels": "portable",
}  # fmt: skip


def synthetic_images(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, size, size, 3) uint8 and (count,) labels: a disc of the class's colour on the
    class's background, placed and sized at random, with pixel noise."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (CLASSES, 2, 3)).astype(np.int16)  # background, disc
    labels = np.arange(count, dtype=np.int64) % CLASSES
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((count, size, size, 3), np.uint8)
    for start in range(0, count, 256):
        rows = np.arange(start, min(count, start + 256))
        cx, cy = rng.uniform(0.25, 0.75, (2, len(rows), 1, 1)) * size
        radius = rng.uniform(0.1, 0.35, (len(rows), 1, 1)) * size
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2  # (B, S, S)
        colours = palette[labels[rows]]  # (B, 2, 3)
        pixels = np.where(disc[..., None], colours[:, None, None, 1], colours[:, None, None, 0])
        pixels = pixels + rng.integers(-24, 25, pixels.shape, dtype=np.int16)
        images[rows] = np.clip(pixels, 0, 255)
    return images, labels


def md5_state(model: nn.Module) -> str:
    digest = hashlib.md5()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Check:
    """The sections, their results and timings, written after each one."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget, self.t0 = out, budget, time.time()
        self.results: dict = {}

    def section(self, name: str, function) -> object:
        if time.time() - self.t0 > self.budget:
            self.results[name] = {"skipped": f"past the budget of {self.budget:.0f} s"}
            return None
        print(f"[{time.time() - self.t0:6.1f} s] {name}", flush=True)
        started = time.time()
        try:
            result = function()
        except Exception as error:  # recorded; the other sections still run
            result = {"error": f"{type(error).__name__}: {error}"[:1500],
                      "traceback": traceback.format_exc()[-2500:]}  # fmt: skip
        self.results[name] = result
        self.results[f"{name}_s"] = round(time.time() - started, 2)
        print(f"    {json.dumps(result, default=str)[:400]}", flush=True)
        self.write()
        return result

    def write(self) -> None:
        self.results["total_s"] = round(time.time() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.results))


class Bench:
    """The data and the helpers every section shares."""

    def __init__(self, small: bool):
        self.small = small
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.size = 16 if small else 128
        self.count = 96 if small else 40_000
        self.distinct = 48 if small else 4_000
        self.max_batches = 2 if small else 40
        # The dry run takes one of each kind where the GPU takes all: it runs the code, not
        # the measurement (tf32 is fp32 on the CPU).
        self.precisions = ("bf16",) if small else ("fp32", "tf32", "bf16")

    def make_data(self) -> dict:
        base, base_labels = synthetic_images(self.distinct, self.size)
        reps = self.count // self.distinct
        images, labels = np.tile(base, (reps, 1, 1, 1)), np.tile(base_labels, reps)
        order = np.random.default_rng(0).permutation(self.count)
        n_val = self.count // 5
        self.base = base
        self.data = Prepared(
            images=images, labels=labels, row_ids=np.arange(self.count),
            train_index=np.sort(order[n_val:]), val_index=np.sort(order[:n_val]),
            class_names=[f"class{c}" for c in range(CLASSES)], img_size=self.size,
        )  # fmt: skip
        return {"images": self.count, "distinct": self.distinct, "px": self.size,
                "train": len(self.data.train_index), "val": len(self.data.val_index)}  # fmt: skip

    def config(self, **changes) -> TrainConfig:
        return TrainConfig.from_params(PARAMS | {"device": str(self.device)} | changes)

    def resume(self, config: TrainConfig, path: Path) -> Resume:
        """The run's saved state at `path`, as the train stage names it (in any process)."""
        return Resume(path, RunIdentity("synthetic", config.identity(1), "code"))

    def fit(self, config: TrainConfig, *, max_batches=None, resume=None, stop_at=None, marks=None):
        """`train.train` as the train stage calls it (after `runtime.start`); SIGTERM before
        training batch `stop_at`. Returns the model."""
        runtime.start(config, precision=config.precision)
        generator = runtime.seed_everything(config.seed)
        model = CNNClassifier(config.model_config(CLASSES))
        batches = [0]

        def stop(module, args):
            if module.training:
                batches[0] += 1
                if batches[0] == stop_at:
                    signal.raise_signal(signal.SIGTERM)

        hook = model.register_forward_pre_hook(stop) if stop_at else None

        def on_epoch(record):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            if marks is not None:
                marks.append(time.perf_counter())

        try:
            train(model, self.data, config, generator=generator, device=self.device,
                  max_batches=max_batches, resume=resume, on_epoch=on_epoch)  # fmt: skip
        finally:
            if hook is not None:
                hook.remove()
        return model


# ---- the sections ------------------------------------------------------------------------


def environment(bench: Bench) -> dict:
    found = {"torch": torch.__version__, "python": platform.python_version(),
             "numpy": np.__version__, "device": str(bench.device),
             "cpus": os.cpu_count()}  # fmt: skip
    if bench.device.type == "cuda":
        found |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    return found


def stage_paths(bench: Bench, work: Path) -> dict:
    """Train, evaluate, embed, audit's copy calibration and the query API, each on the device,
    deterministic algorithms on: the code the stages call, on a slice of the data."""
    from imgrec.data.prepared import IMAGES_FILE, save_prepared_labels
    from imgrec.recommender.audit import copy_similarity_threshold
    from imgrec.recommender.catalog import load_catalog, save_catalog
    from imgrec.recommender.embed import embed_catalog, no_close_match_threshold
    from imgrec.serving.query import Recommender
    from imgrec.training.checkpoint import checkpoint_md5, load_checkpoint, save_checkpoint
    from imgrec.training.evaluate import classification_metrics
    from imgrec.training.inference import embed, predict_logits

    config = bench.config(epochs=2)
    model = bench.fit(config, max_batches=bench.max_batches)
    data = bench.data
    logits = predict_logits(model, data.images, data.val_index, device=bench.device)
    metrics, _ = classification_metrics(
        data.labels[data.val_index], logits.argmax(1).numpy(), data.class_names
    )
    catalog_size = 32 if bench.small else 1000
    folder = work / "prepared"
    folder.mkdir()
    np.save(folder / IMAGES_FILE, bench.base[:catalog_size])
    halves = np.arange(catalog_size // 2), np.arange(catalog_size // 2, catalog_size)
    save_prepared_labels(
        folder, labels=data.labels[:catalog_size], row_ids=np.arange(catalog_size),
        train_index=halves[0], val_index=halves[1], class_names=data.class_names,
        img_size=bench.size,
    )  # fmt: skip
    images = bench.base[:catalog_size]
    embedded = embed_catalog(model, images, None, bench.device)
    threshold = no_close_match_threshold(
        embedded.appearance,
        np.arange(catalog_size // 2),
        np.arange(catalog_size // 2, catalog_size),
    )
    save_checkpoint(work / "model.pt", model.cpu(), data.class_names, bench.size,
                    train_config=config.identity(1), prepared_md5="synthetic")  # fmt: skip
    save_catalog(work / "catalog", embedded.embeddings, embedded.appearance,
                 np.arange(catalog_size), checkpoint_md5(work / "model.pt"), threshold)  # fmt: skip
    recommender = Recommender.load(work / "model.pt", work / "catalog", folder, str(bench.device))
    neighbours, _, _ = recommender.recommend(images[:16], top_k=5)
    classified = recommender.classify(images[:16])
    audited = load_checkpoint(work / "model.pt", bench.device).model  # as the audit stage
    copy_cosine = copy_similarity_threshold(
        load_catalog(work / "catalog", folder), lambda x: embed(audited, x, device=bench.device)
    )
    return {
        "train": "ok",
        "evaluate_val_accuracy": round(metrics["val_accuracy"], 4),
        "embed_position_matters": embedded.kept is None,
        "query_device": str(recommender.device),
        "query_finds_itself_first": all(n[0].row_id == i for i, n in enumerate(neighbours)),
        "query_classified": len(classified),
        "audit_copy_cosine": round(copy_cosine, 4),
        "ok": all(n[0].row_id == i for i, n in enumerate(neighbours)) and 0 < copy_cosine <= 1,
    }


def determinism(bench: Bench) -> dict:
    """Two runs of each precision, the second in a new process as a second `dvc repro` runs:
    the same weights to the byte."""
    cases = [{"epochs": 2, "precision": p, "augment": p == "fp32"} for p in bench.precisions]
    here = [md5_state(bench.fit(bench.config(**c), max_batches=bench.max_batches)) for c in cases]
    again = fits_in_a_new_process(bench, [{"changes": c} for c in cases])
    found = {
        f"{c['precision']}_two_runs_equal": first == second
        for c, first, second in zip(cases, here, again, strict=True)
    }
    found["ok"] = all(found.values())
    return found


def resume(bench: Bench, work: Path) -> dict:
    """A run stopped by SIGTERM mid-epoch and resumed in a new process, as the stage resumes,
    against one never stopped."""
    found, uninterrupted, resumes = {}, [], []
    cases = (("fp32", {"epochs": 2}), ("augment_tf32", {"epochs": 2, "augment": True,
                                                        "precision": "tf32"}))  # fmt: skip
    cases = cases[1:] if bench.small else cases
    for name, changes in cases:
        config = bench.config(**changes)
        uninterrupted.append(md5_state(bench.fit(config, max_batches=bench.max_batches)))
        path = work / f"state-{name}.pt"
        stop_at = bench.max_batches + bench.max_batches // 2  # mid-epoch 2
        try:
            bench.fit(config, max_batches=bench.max_batches, resume=bench.resume(config, path),
                      stop_at=stop_at)  # fmt: skip
            found[f"{name}_stopped_mid_epoch"] = False
        except Stopped:
            found[f"{name}_stopped_mid_epoch"] = True
        resumes.append({"changes": changes, "resume": str(path)})
    resumed = fits_in_a_new_process(bench, resumes)
    for (name, _), first, second in zip(cases, uninterrupted, resumed, strict=True):
        found[f"{name}_resumed_equal_uninterrupted"] = first == second
    found["ok"] = all(found.values())
    return found


def fits_in_a_new_process(bench: Bench, fits: list[dict]) -> list[str]:
    """The weights' md5 of each fit (`run_fits`) run in a fresh process: its own CUDA context,
    cuDNN handles and allocator, as a second `dvc repro` or a resumed stage has."""
    command = [sys.executable, str(Path(__file__).resolve()), "--fits", json.dumps(fits)]
    run = subprocess.run(command + ["--small"] * bench.small, capture_output=True, text=True,
                         timeout=600, check=False)  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"the fits in a new process failed: {run.stderr[-1500:]}")
    return json.loads(run.stdout.splitlines()[-1])


def run_fits(bench: Bench, fits: list[dict]) -> list[str]:
    """`--fits`: each fit ({"changes": config changes, "resume": a state file, optional}),
    trained as `bench.fit` trains it; the weights' md5 of each."""
    bench.make_data()
    found = []
    for fit in fits:
        config = bench.config(**fit["changes"])
        state = bench.resume(config, Path(fit["resume"])) if fit.get("resume") else None
        found.append(md5_state(bench.fit(config, max_batches=bench.max_batches, resume=state)))
    return found


def incremental_embed(bench: Bench) -> dict:
    """A grown catalog (the first part kept) against one full pass, bit for bit; or the probe
    says an image's place in the batch matters and everything is embedded."""
    from imgrec.recommender.embed import FULL_BATCH, embed_catalog
    from imgrec.training.inference import catalog_vectors

    images = bench.base[: 600 if bench.small else 4000]
    found = {}
    for precision in ("fp32", "tf32"):  # an inference only: cheap on the CPU too
        runtime.start(bench.config(), precision=precision)
        torch.manual_seed(0)
        model = CNNClassifier(bench.config().model_config(CLASSES)).to(bench.device)
        full = catalog_vectors(model, images, batch_size=FULL_BATCH, device=bench.device)
        before = embed_catalog(model, images[: len(images) * 2 // 3], None, bench.device)
        grown = embed_catalog(model, images, before.kept, bench.device)
        pairs = zip(full, (grown.embeddings, grown.appearance), strict=True)
        equal = all(np.array_equal(a, b) for a, b in pairs)
        found[f"{precision}_position_matters"] = grown.kept is None
        found[f"{precision}_grown_equals_full_pass"] = equal
        found[f"{precision}_embedded"] = grown.new_images
    runtime.set_precision("fp32")
    found["ok"] = found["fp32_grown_equals_full_pass"] and found["tf32_grown_equals_full_pass"]
    return found


def epoch_seconds(bench: Bench) -> dict:
    """One epoch of all the training images plus validation, as the stage trains: the second
    of two (the first also copies the images to the device and warms cuDNN up)."""
    found = {}
    for batch_size in (32,) if bench.small else (32, 256):
        for precision in bench.precisions:
            marks: list[float] = []
            config = bench.config(epochs=2, batch_size=batch_size, precision=precision)
            bench.fit(config, marks=marks)
            found[f"b{batch_size}_{precision}"] = round(marks[1] - marks[0], 3)
    return found


def seed_loop(bench: Bench) -> dict:
    """The seed's loop on the device: JPEG decode, resize and ToTensor in `__getitem__`,
    DataLoader(batch 32, shuffle), fp32; without and with DataLoader workers. Timed past the
    batches the workers decode ahead (two each) before the first is asked for, in the steady
    state; the JPEGs are drawn with replacement so that there are batches enough."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, RandomSampler

    big = 4 * bench.size  # JPEGs of 512 px, decoded and resized to 128 as the seed does
    jpegs = []
    count = 160 if bench.small else 512
    for pixels in bench.base[np.arange(count) % len(bench.base)]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((big, big), Image.Resampling.BICUBIC).save(
            buffer, format="JPEG", quality=90
        )
        jpegs.append(buffer.getvalue())
    labels = [i % CLASSES for i in range(len(jpegs))]
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        import baseline
        import pandas as pd

        dataset = baseline.ImageDataset(pd.DataFrame({"image": [{"bytes": j} for j in jpegs],
                                                      "label": labels}))  # fmt: skip
        network, how = baseline.CNN_Classifier(CLASSES), "as written (benchmarks/baseline.py)"
    except ImportError as missing:
        size = bench.size

        class PILDataset(Dataset):  # torchvision's Resize((128, 128)) + ToTensor, in PIL
            def __len__(self):
                return len(jpegs)

            def __getitem__(self, i):
                image = Image.open(io.BytesIO(jpegs[i])).convert("RGB")
                image = image.resize((size, size), Image.Resampling.BILINEAR)
                pixels = torch.from_numpy(np.asarray(image, np.float32) / 255)
                return pixels.permute(2, 0, 1), labels[i]

        dataset, how = PILDataset(), f"an equivalent PIL loop ({missing.name} is missing)"
        network = CNNClassifier(bench.config().model_config(CLASSES))
    torch.use_deterministic_algorithms(False)
    network = network.to(bench.device)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    found = {"loop": how, "mean_jpeg_kb": round(np.mean([len(j) for j in jpegs]) / 1024, 1)}
    batches = 2 if bench.small else 30
    for workers in (0, 2) if bench.small else (0, 8, min(15, (os.cpu_count() or 2) - 1)):
        ahead = 2 + 2 * workers  # DataLoader's prefetch_factor 2 per worker, and their start
        order = RandomSampler(dataset, replacement=True, num_samples=32 * (ahead + batches))
        loader = DataLoader(dataset, batch_size=32, sampler=order, num_workers=workers)
        seen, started = 0, None
        for step, (x, y) in enumerate(loader):
            if step == ahead:
                if bench.device.type == "cuda":
                    torch.cuda.synchronize()
                seen, started = 0, time.perf_counter()
            x, y = x.to(bench.device), torch.as_tensor(y).to(bench.device)
            loss = nn.functional.cross_entropy(network(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the seed's loop reads the loss every batch
            seen += len(y)
        rate = seen / (time.perf_counter() - started)
        found[f"workers{workers}_imgs_per_s"] = round(rate, 1)
        found[f"workers{workers}_epoch_s_40k"] = round(40_000 / rate, 1)
    runtime.make_deterministic(2)
    return found


def ceiling(bench: Bench) -> dict:
    """The model's training step with the batch already on the device, cuDNN autotuned,
    deterministic algorithms off: what no data path can beat."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    runtime.set_precision("tf32")  # torch's defaults: the fastest the GPU offers
    found = {}
    cases = [(32, "tf32")] if bench.small else [(32, "tf32"), (256, "tf32"), (256, "bf16")]
    for batch_size, precision in cases:
        model = CNNClassifier(bench.config().model_config(CLASSES))
        model = model.to(bench.device, memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.rand(batch_size, 3, bench.size, bench.size, device=bench.device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, CLASSES, (batch_size,), device=bench.device)
        autocast = torch.autocast(bench.device.type, torch.bfloat16, enabled=precision == "bf16")

        steps = 3 if bench.small else 60
        for i in range(3 + steps):
            if i == 3:  # past cuDNN's autotuning
                if bench.device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            with autocast:
                loss = nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if bench.device.type == "cuda":
            torch.cuda.synchronize()
        rate = batch_size * steps / (time.perf_counter() - started)
        found[f"b{batch_size}_{precision}_imgs_per_s"] = round(rate, 1)
        found[f"b{batch_size}_{precision}_epoch_s_40k"] = round(40_000 / rate, 2)
    torch.backends.cudnn.benchmark = False
    runtime.make_deterministic(2)
    runtime.set_precision("fp32")
    return found


# ---- the report --------------------------------------------------------------------------

CHECKS = ("stage_paths", "determinism", "resume", "incremental_embed")


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    lines = [f"# imgrec GPU check: {env.get('gpu', env.get('device', '?'))}", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
             f"Python {env.get('python')}; {results.get('total_s')} s in all", "",
             "| check | result |", "|---|---|"]  # fmt: skip
    for name in CHECKS:
        result = results.get(name)
        if isinstance(result, dict):
            verdict = "pass" if result.get("ok") else "FAIL"
            detail = ", ".join(
                f"{k} {v}" for k, v in result.items() if k not in ("ok", "traceback")
            )
            lines.append(f"| {name} | {verdict}: {detail} |")
    epochs = results.get("epoch_seconds")
    if isinstance(epochs, dict) and "error" not in epochs and "skipped" not in epochs:
        data = results.get("data", {})
        lines += ["", f"Epoch seconds, {data.get('train')} train + {data.get('val')} validation "
                  f"images at {data.get('px')} px (the stage's loop, deterministic):", "",
                  "| batch | fp32 | tf32 | bf16 |", "|---|---|---|---|"]  # fmt: skip
        for batch_size in (32, 256):
            row = [str(epochs.get(f"b{batch_size}_{p}")) for p in ("fp32", "tf32", "bf16")]
            lines.append(f"| {batch_size} | {' | '.join(row)} |")
    for name in ("seed_loop", "ceiling"):
        result = results.get(name)
        if isinstance(result, dict):
            lines += ["", f"{name}: " + ", ".join(f"{k} {v}" for k, v in result.items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the JSON and table")
    parser.add_argument("--small", action="store_true", help="tiny sizes: a CPU dry run")
    parser.add_argument("--budget", type=float, help="seconds; later sections are skipped "
                        "(default 210 on a GPU, none with --small)")  # fmt: skip
    parser.add_argument("--fits", help=argparse.SUPPRESS)  # the checks' new process: run_fits
    args = parser.parse_args()
    if args.fits:
        print(json.dumps(run_fits(Bench(args.small), json.loads(args.fits))))
        return 0
    if args.out is None:
        parser.error("--out is required")
    budget = args.budget or (float("inf") if args.small else 210.0)
    bench = Bench(args.small)
    if bench.device.type != "cuda" and not args.small:
        print("gpu_check: torch sees no CUDA GPU here; --small runs it on the CPU.")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, budget)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        check.section("environment", lambda: environment(bench))
        check.section("data", bench.make_data)
        check.section("stage_paths", lambda: stage_paths(bench, work))
        check.section("determinism", lambda: determinism(bench))
        check.section("resume", lambda: resume(bench, work))
        check.section("incremental_embed", lambda: incremental_embed(bench))
        check.section("epoch_seconds", lambda: epoch_seconds(bench))
        check.section("seed_loop", lambda: seed_loop(bench))
        check.section("ceiling", lambda: ceiling(bench))
    check.write()
    failed = [
        n
        for n in CHECKS
        if not (isinstance(check.results.get(n), dict) and check.results[n].get("ok"))
    ]
    print(
        f"gpu_check: {args.out / 'gpu_check.md'}; "
        + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
