"""Baseline (the seed's script) and imgrec, side by side on one synthetic catalog.

    python benchmarks/run.py --rows 40000 --train-batches 60 --out benchmarks/RESULTS.md

Every stage of each side runs in a fresh subprocess, so its time and peak
memory are its own. Both sides read the same generated catalog, train from
the same initial weights on the same rows, and search the same embeddings.
Prints one markdown report: machine, per-stage table with imgrec/baseline
ratios, compute efficiency against this machine's measured matmul peak,
the FAISS measurements and the bars from issue 4.
"""

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIDES = ("baseline", "imgrec")


# --------------------------------------------------------------------------- measuring


def _tree_memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) summed over a process and its descendants, in kB."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0, 0
    rss = anon = 0
    for proc in procs:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            fields = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+) kB", status, re.MULTILINE))
            rss += int(fields.get("VmRSS", 0))
            anon += int(fields.get("RssAnon", 0))
    return rss, anon


def run_worker(name: str, config_path: Path, work: Path, label: str | None = None) -> dict:
    """Run one stage in a fresh interpreter; return its result with wall time and peak memory."""
    label = label or name
    result_path = work / "results" / f"{name}.json"
    result_path.unlink(missing_ok=True)
    log_path = work / "logs" / f"{label}.log"
    command = [sys.executable, str(HERE / "run.py"), "--worker", name, "--config", str(config_path)]
    peak = {"rss": 0, "anon": 0}
    done = threading.Event()
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

        def sample() -> None:
            while not done.is_set():
                rss, anon = _tree_memory_kb(proc.pid)
                peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text().splitlines()[-15:]
        raise SystemExit(f"worker {name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    result = json.loads(result_path.read_text())
    # ru_maxrss: the main process's own high-water mark (kB), which sampling can miss.
    peak_rss_kb = max(peak["rss"], usage.ru_maxrss)
    result.update(wall_s=wall, peak_rss_mb=peak_rss_kb / 1024, peak_anon_mb=peak["anon"] / 1024)
    print(
        f"  {label:<26} {result.get('seconds', wall):8.1f} s   "
        f"peak RSS {result['peak_rss_mb']:7.0f} MB   (process wall {wall:.0f} s)",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- workers


def _clock() -> float:
    return time.perf_counter()


def _cpu_s() -> float:
    """CPU seconds of this process's threads and of its reaped child processes."""
    import resource

    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Stopwatch:
    """Wall and CPU seconds of a block: `with Stopwatch() as watch: ...; watch.seconds`."""

    def __enter__(self) -> "Stopwatch":
        self._wall, self._cpu = _clock(), _cpu_s()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds, self.cpu_s = _clock() - self._wall, _cpu_s() - self._cpu

    def result(self, **extra) -> dict:
        return {"seconds": self.seconds, "cpu_s": self.cpu_s, **extra}


def _imgrec_runtime(cfg: dict):
    import torch

    from imgrec import runtime

    runtime.make_deterministic(cfg["num_threads"])
    device = runtime.pick_device(cfg["device"])
    return device, torch


def _frame(cfg: dict):
    """The seed's DataFrame, loaded the seed's way (its memory is part of the seed's stages)."""
    import baseline_fetch

    return baseline_fetch.load_frame(cfg["source"], cfg["rows"])


def _state_digest(state: dict) -> str:
    digest = hashlib.sha256()
    for tensor in state.values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def forward_flops(model, img_size: int) -> int:
    """Multiply-adds x 2 of one image's forward pass: convolutions and linear layers."""
    import torch
    from torch import nn

    flops = 0

    def count(module, inputs, output) -> None:
        nonlocal flops
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0]
            flops += 2 * output.numel() * per_output * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features * output.shape[0]

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, img_size, img_size))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return flops


def fp32_matmul_gflops(seconds: float = 1.5) -> float:
    """torch.matmul rate on 2048 x 2048 fp32 now, with this process's threads."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b  # warm-up
    reps, tic = 0, _clock()
    while reps < 2 or _clock() - tic < seconds:
        a @ b
        reps += 1
    return 2 * 2048**3 * reps / (_clock() - tic) / 1e9


class PeakAround:
    """The fp32 matmul rate just before and just after a block, averaged: the load on a
    shared machine changes, so a share of peak compares with the peak of the moment."""

    def __enter__(self) -> "PeakAround":
        self.before = fp32_matmul_gflops()
        return self

    def __exit__(self, *exc) -> None:
        self.gflops = (self.before + fp32_matmul_gflops()) / 2


def _epoch_rates(stamps: list[float], marks: list[int], batch_size: int) -> list[float]:
    """Images/s per epoch from optimizer-step timestamps; the first step of an epoch is warm-up."""
    rates, start = [], 0
    for end in marks:
        epoch = stamps[start:end]
        if len(epoch) >= 2:
            rates.append((len(epoch) - 1) * batch_size / (epoch[-1] - epoch[0]))
        start = end
    return rates


def worker_machine(cfg: dict) -> dict:
    """Measured matmul peak: torch.matmul of n x n matrices, fp32 and bf16."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = 2048
        if dtype != torch.float32:
            # CPUs without native bf16 emulate it, ~50x slower than fp32: size the test from a
            # small probe so it takes seconds, not minutes.
            probe = torch.randn(512, 512, dtype=dtype)
            probe @ probe
            tic = _clock()
            probe @ probe
            rate = 2 * 512**3 / max(_clock() - tic, 1e-9)
            while n > 512 and 2 * n**3 / rate > 5.0:
                n //= 2
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        reps, tic = 0, _clock()
        while reps < 3 or _clock() - tic < 2.0:
            a @ b
            reps += 1
        peaks[name] = {"gflops": 2 * n**3 * reps / (_clock() - tic) / 1e9, "n": n}
    # numpy's BLAS as a second opinion on the fp32 peak (the recommend stage runs on it).
    import numpy as np

    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    reps, tic = 0, _clock()
    while reps < 3 or _clock() - tic < 2.0:
        a @ a
        reps += 1
    peaks["fp32_numpy"] = {"gflops": 2 * 2048**3 * reps / (_clock() - tic) / 1e9, "n": 2048}
    return {
        "matmul": peaks,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def worker_fetch_baseline(cfg: dict) -> dict:
    import baseline_fetch

    tic = _clock()
    literal = baseline_fetch.literal_head_rows(cfg["source"], cfg["rows"])
    literal_s = _clock() - tic
    with Stopwatch() as watch:
        frame = baseline_fetch.load_frame(cfg["source"], cfg["rows"])
    return watch.result(images=len(frame), literal_head_rows=literal, literal_head_s=literal_s)


def worker_fetch_imgrec(cfg: dict) -> dict:
    import dask.dataframe  # noqa: F401 - imported before the clock starts, as on the baseline side

    from imgrec.sources import fetch

    Path(cfg["raw"]).unlink(missing_ok=True)
    with Stopwatch() as watch:
        result = fetch(cfg["source"], cfg["rows"], cfg["raw"])
    return watch.result(images=result.rows_fetched)


def worker_prepare_baseline(cfg: dict) -> dict:
    """The seed has no prepare: it decodes every image in __getitem__ on every epoch."""
    import baseline
    import torch
    from torch.utils.data import DataLoader, Subset

    frame = _frame(cfg)
    count = min(cfg["decode_images"], len(frame))
    loader = DataLoader(
        Subset(baseline.ImageDataset(frame), range(count)), batch_size=baseline.BATCH_SIZE
    )
    seen = 0
    with Stopwatch() as watch:
        for images, _ in loader:
            seen += len(images)
    assert seen == count
    assert images.dtype == torch.float32
    return watch.result(images=count)


def worker_prepare_imgrec(cfg: dict) -> dict:
    from imgrec.preparation import prepare

    out = Path(cfg["prepared"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with Stopwatch() as watch:
        counts = prepare(
            cfg["raw"],
            out,
            img_size=cfg["img_size"],
            val_fraction=cfg["val_fraction"],
            seed=cfg["seed"],
            max_bad_fraction=cfg["max_bad_fraction"],
        )
    return watch.result(images=counts["rows_read"], counts=counts)


def worker_train_imgrec(cfg: dict) -> dict:
    from imgrec import runtime
    from imgrec.checkpoint import save_checkpoint
    from imgrec.model import CNNClassifier, ModelConfig
    from imgrec.prepared import load_prepared
    from imgrec.training import train

    device, torch = _imgrec_runtime(cfg)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    generator = runtime.seed_everything(cfg["seed"])
    data = load_prepared(cfg["prepared"])
    model = CNNClassifier(ModelConfig(num_classes=len(data.class_names), dropout=cfg["dropout"]))
    torch.save(model.state_dict(), cfg["init_weights"])
    init_digest = _state_digest(model.state_dict())
    flops = forward_flops(model, cfg["img_size"])

    stamps: list[float] = []
    marks: list[int] = []
    hook = register_optimizer_step_post_hook(lambda *_: stamps.append(_clock()))
    with PeakAround() as peak, Stopwatch() as watch:
        result = train(
            model,
            data.images,
            data.labels,
            data.train_index,
            data.val_index[: cfg["val_images"]],
            batch_size=cfg["batch_size"],
            epochs=cfg["epochs"],
            lr=cfg["lr"],
            patience=cfg["patience"],
            lr_factor=cfg["lr_factor"],
            lr_patience=cfg["lr_patience"],
            augment=cfg["augment"],
            generator=generator,
            device=device,
            channels_last=cfg["channels_last"],
            precision=cfg["precision"],
            max_batches=cfg["train_batches"],
            on_epoch=lambda record: marks.append(len(stamps)),
        )
    hook.remove()
    if cfg.get("save_outputs", True):
        save_checkpoint(cfg["imgrec_model"], model.cpu(), data.class_names, data.img_size)
    rates = _epoch_rates(stamps, marks, cfg["batch_size"])
    return {
        **watch.result(),
        "peak_gflops_now": peak.gflops,
        "images": len(stamps) * cfg["batch_size"],
        "images_per_s": sum(rates) / len(rates),
        "epoch_rates": rates,
        "val_acc": [record["val_acc"] for record in result.history],
        "val_loss": [record["val_loss"] for record in result.history],
        "init_digest": init_digest,
        "forward_flops": flops,
        "threads": torch.get_num_threads(),
        "train_images": len(data.train_index),
    }


def worker_train_baseline(cfg: dict) -> dict:
    import baseline
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from imgrec.prepared import load_prepared

    torch.manual_seed(cfg["seed"])
    frame = _frame(cfg)
    data = load_prepared(cfg["prepared"])  # for the split only: same rows on both sides
    rows_train = data.row_ids[data.train_index]
    rows_val = data.row_ids[data.val_index[: cfg["val_images"]]]
    labels = frame["label"].to_numpy()
    assert np.array_equal(labels[data.row_ids], data.labels), "label ids differ between sides"

    model = baseline.CNN_Classifier(num_classes=len(data.class_names))
    initial = torch.load(cfg["init_weights"], weights_only=True)
    own = model.state_dict()
    assert len(own) == len(initial), "the seed's CNN and imgrec's differ in layers"
    mapped = {}
    for (key, mine), theirs in zip(own.items(), initial.values(), strict=True):
        assert mine.shape == theirs.shape, f"{key}: {mine.shape} vs {theirs.shape}"
        mapped[key] = theirs
    model.load_state_dict(mapped)
    init_digest = _state_digest(model.state_dict())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    # shuffle=True spelled out as its RandomSampler, seeded as imgrec seeds its own: both sides
    # then see the same batches in the same order. The validation loader gets a throwaway
    # generator so it does not advance the global RNG (dropout masks stay in step too).
    train_loader = DataLoader(
        baseline.ImageDataset(frame.iloc[rows_train].reset_index(drop=True)),
        batch_size=baseline.BATCH_SIZE,
        sampler=RandomSampler(rows_train, generator=torch.Generator().manual_seed(cfg["seed"])),
    )
    val_loader = DataLoader(
        baseline.ImageDataset(frame.iloc[rows_val].reset_index(drop=True)),
        batch_size=baseline.BATCH_SIZE,
        generator=torch.Generator(),
    )
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg["lr_factor"], patience=cfg["lr_patience"]
    )
    stamps: list[float] = []
    marks: list[int] = []
    val_acc, val_loss = [], []
    with PeakAround() as peak, Stopwatch() as watch:
        for _ in range(cfg["epochs"]):
            baseline.train_epoch(
                model,
                train_loader,
                criterion,
                optimizer,
                device,
                max_batches=cfg["train_batches"],
                on_step=lambda n: stamps.append(_clock()),
            )
            marks.append(len(stamps))
            loss, acc = baseline.validate(model, val_loader, criterion, device)
            scheduler.step(loss)
            val_acc.append(acc)
            val_loss.append(loss)
    if cfg.get("save_outputs", True):
        torch.save(model.state_dict(), cfg["baseline_model"])
    rates = _epoch_rates(stamps, marks, baseline.BATCH_SIZE)
    return {
        **watch.result(),
        "peak_gflops_now": peak.gflops,
        "images": len(stamps) * baseline.BATCH_SIZE,
        "images_per_s": sum(rates) / len(rates),
        "epoch_rates": rates,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "init_digest": init_digest,
        "threads": torch.get_num_threads(),
    }


def worker_embed_imgrec(cfg: dict) -> dict:
    import numpy as np

    from imgrec.checkpoint import load_checkpoint
    from imgrec.inference import embed
    from imgrec.prepared import load_prepared

    device, _ = _imgrec_runtime(cfg)
    data = load_prepared(cfg["prepared"])
    model, _ = load_checkpoint(cfg["imgrec_model"], device)
    index = np.arange(min(cfg["embed_images"] or len(data.labels), len(data.labels)))
    with PeakAround() as peak, Stopwatch() as watch:
        embeddings = embed(model, data.images, index, device=device)  # (N, 512)
    np.save(cfg["embeddings"], embeddings)
    return watch.result(images=len(embeddings), peak_gflops_now=peak.gflops)


def worker_embed_baseline(cfg: dict) -> dict:
    import baseline
    import torch
    from torch.utils.data import DataLoader

    frame = _frame(cfg)
    count = min(cfg["baseline_embed_images"], len(frame))
    model = baseline.CNN_Classifier(num_classes=cfg["num_classes"])
    model.load_state_dict(torch.load(cfg["baseline_model"], weights_only=True))
    loader = DataLoader(baseline.ImageDataset(frame.iloc[:count]), batch_size=baseline.BATCH_SIZE)
    with PeakAround() as peak, Stopwatch() as watch:
        embeddings = baseline.extract_embeddings(model, loader, torch.device("cpu"))
    return watch.result(images=len(embeddings), peak_gflops_now=peak.gflops)


def _catalog_embeddings(cfg: dict):
    """The catalog both sides search: imgrec's embeddings and their labels.

    When imgrec embedded fewer images than the catalog holds (to keep the run
    short), the rest are stand-ins: a real embedding with each entry scaled by
    1 + N(0, 0.05), re-normalised. Scaling keeps the ReLU's zeros where they
    are, so the stand-ins use the same dimensions as real embeddings do; search
    cost depends on the matrix's size and live dimensions, not its values.
    """
    import numpy as np

    from imgrec.prepared import load_prepared

    embeddings = np.load(cfg["embeddings"])
    labels = load_prepared(cfg["prepared"]).labels
    real = len(embeddings)
    missing = len(labels) - real
    if missing > 0:
        rng = np.random.default_rng(0)
        source = rng.integers(0, real, missing)
        noise = rng.normal(1.0, 0.05, (missing, embeddings.shape[1])).astype(np.float32)
        extra = embeddings[source] * noise
        extra /= np.linalg.norm(extra, axis=1, keepdims=True)
        embeddings = np.concatenate([embeddings, extra])
        labels = np.concatenate([labels[:real], labels[source]])
    return embeddings, labels, real


def _query_latency_ms(search, queries) -> dict:
    import numpy as np

    times = []
    for query in queries:
        tic = _clock()
        search(int(query))
        times.append((_clock() - tic) * 1000)
    return {"median": float(np.median(times)), "p95": float(np.percentile(times, 95))}


def worker_recommend_imgrec(cfg: dict) -> dict:
    import numpy as np

    from imgrec.neighbors import ExactIndex, retrieval_metrics

    embeddings, labels, real = _catalog_embeddings(cfg)
    top_k = cfg["top_k"]
    with Stopwatch() as watch:
        index = ExactIndex().fit(embeddings)
        _, neighbors = index.search_catalog(top_k)  # (N, k)
    np.save(cfg["imgrec_neighbors"], neighbors)
    queries = np.random.default_rng(0).integers(0, len(embeddings), cfg["latency_queries"])
    latency = _query_latency_ms(lambda q: index.search(embeddings[q : q + 1], top_k + 1), queries)
    return watch.result(
        images=len(embeddings),
        real_embeddings=real,
        live_dims=len(index.active_dims_),
        query_ms=latency,
        **retrieval_metrics(labels[neighbors], labels),
    )


def worker_recommend_baseline(cfg: dict) -> dict:
    import baseline
    import numpy as np

    from imgrec.neighbors import retrieval_metrics

    embeddings, labels, _ = _catalog_embeddings(cfg)
    top_k = cfg["top_k"]
    queries = np.random.default_rng(0).integers(0, len(embeddings), cfg["latency_queries"])
    latency = _query_latency_ms(lambda q: baseline.recommend_one(embeddings, q, top_k), queries)
    with Stopwatch() as watch:
        _, neighbors = baseline.recommend_all(embeddings, top_k)
    theirs = np.load(cfg["imgrec_neighbors"])
    same = np.mean([set(a) == set(b) for a, b in zip(neighbors, theirs, strict=True)])
    return watch.result(
        images=len(embeddings),
        query_ms=latency,
        same_neighbours_as_imgrec=float(same),
        **retrieval_metrics(labels[neighbors], labels),
    )


def _single_queries(index, queries, k: int):
    """Search one query at a time, as a user would: (indices (Q, k), latency in ms)."""
    import numpy as np

    found, times = [], []
    for query in queries:
        tic = _clock()
        _, indices = index.search(query[None], k)
        times.append((_clock() - tic) * 1000)
        found.append(indices[0])
    latency = {"median": float(np.median(times)), "p95": float(np.percentile(times, 95))}
    return np.stack(found), latency


def _recall(found, truth) -> float:
    return sum(len(set(a) & set(b)) for a, b in zip(found, truth, strict=True)) / truth.size


def worker_faiss(cfg: dict) -> dict:
    """Exact vs HNSW (imgrec.neighbors.FaissIndex) vs IVF-Flat over random unit vectors."""
    import numpy as np
    from ivf import IVFFlatIndex

    from imgrec.neighbors import ExactIndex, FaissIndex

    n, dim, k = cfg["faiss_vectors"], 512, 10
    rng = np.random.default_rng(cfg["seed"])
    vectors = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in blocks: no float64 temporaries of the whole set
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        vectors[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    queries = rng.standard_normal((cfg["faiss_queries"], dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    exact = ExactIndex().fit(vectors)
    with Stopwatch() as watch:
        _, truth = exact.search(queries, k)
    result = {
        "vectors": n,
        "exact_batched_ms_per_query": watch.seconds * 1000 / len(queries),
        "exact_query_ms": _single_queries(exact, queries[:20], k)[1],
        "indexes": [],
    }
    candidates = []
    if cfg["hnsw_m"]:
        candidates.append(
            (
                f"imgrec FaissIndex (HNSW, M={cfg['hnsw_m']}, "
                f"efConstruction={cfg['hnsw_ef_construction']})",
                FaissIndex(
                    hnsw_m=cfg["hnsw_m"],
                    hnsw_ef_construction=cfg["hnsw_ef_construction"],
                    hnsw_ef_search=cfg["hnsw_ef_search"],
                ),
                "efSearch",
                cfg["hnsw_ef_sweep"],
                lambda index, value: setattr(index.index_.hnsw, "efSearch", value),
            )
        )
    if cfg["ivf_lists"]:
        candidates.append(
            (
                f"IVF-Flat (benchmarks/ivf.py, {cfg['ivf_lists']} lists)",
                IVFFlatIndex(n_lists=cfg["ivf_lists"]),
                "nprobe",
                cfg["ivf_probe_sweep"],
                lambda index, value: setattr(index, "n_probe", value),
            )
        )
    for name, index, knob, values, set_knob in candidates:
        with Stopwatch() as build:
            index.fit(vectors)
        sweep = []
        for value in values:
            set_knob(index, value)
            found, latency = _single_queries(index, queries, k)
            sweep.append({"knob": value, "recall": _recall(found, truth), "query_ms": latency})
        result["indexes"].append(
            {"name": name, "knob": knob, "build_s": build.seconds, "sweep": sweep}
        )
        del index
    result["seconds"] = sum(entry["build_s"] for entry in result["indexes"])
    return result


WORKERS = {
    "machine": worker_machine,
    "fetch-baseline": worker_fetch_baseline,
    "fetch-imgrec": worker_fetch_imgrec,
    "prepare-baseline": worker_prepare_baseline,
    "prepare-imgrec": worker_prepare_imgrec,
    "train-imgrec": worker_train_imgrec,
    "train-baseline": worker_train_baseline,
    "embed-baseline": worker_embed_baseline,
    "embed-imgrec": worker_embed_imgrec,
    "recommend-imgrec": worker_recommend_imgrec,
    "recommend-baseline": worker_recommend_baseline,
    "faiss": worker_faiss,
}


def worker_main(name: str, config_path: Path) -> None:
    sys.path.insert(0, str(HERE))
    cfg = json.loads(config_path.read_text())
    result = WORKERS[name](cfg)
    Path(cfg["work"], "results", f"{name}.json").write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------- the report


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    wanted = re.compile(r"^(avx.*|fma|f16c|amx.*|sse4_2)$")
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "flags": sorted(f for f in (flags.group(1).split() if flags else []) if wanted.match(f)),
        "ram_gb": round(total_kb / 1024**2, 1),
        "python": platform.python_version(),
        "load_avg": os.getloadavg(),
    }


def dvc_noop(root: Path) -> dict:
    """Time `dvc status` and a no-op `dvc repro`, only where the pipeline has run and is current."""
    if not (root / "dvc.lock").exists():
        return {"measured": False, "why": "no dvc.lock in the repository yet (pipeline never run)"}
    dvc = Path(sys.executable).with_name("dvc")
    dvc_cmd = str(dvc) if dvc.exists() else "dvc"
    tic = _clock()
    status = subprocess.run([dvc_cmd, "status"], cwd=root, capture_output=True, text=True)
    status_s = _clock() - tic
    if status.returncode != 0 or "up to date" not in status.stdout:
        return {
            "measured": False,
            "status_s": status_s,
            "why": "`dvc status` reports changes, so `dvc repro` would run stages, not a no-op",
        }
    tic = _clock()
    repro = subprocess.run([dvc_cmd, "repro"], cwd=root, capture_output=True, text=True)
    return {"measured": repro.returncode == 0, "status_s": status_s, "repro_s": _clock() - tic}


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(imgrec_value, baseline_value) -> str:
    if not imgrec_value or not baseline_value:
        return "-"
    return f"{imgrec_value / baseline_value:.2f}x"


def report(cfg: dict, machine: dict, peak: dict, results: dict, dvc: dict) -> str:
    def rate(r):
        return r.get("images_per_s") or (r["images"] / r["seconds"] if r.get("seconds") else None)

    def speed(stage, b, i) -> str:
        if stage == "train" and rounds:
            return f"{train_speedup(results):.2f}x"
        return _ratio(rate(i), rate(b))

    lines = []
    add = lines.append
    add("## Machine\n")
    add(f"- CPU: {machine['cpu']}, {machine['cores']} cores usable, {machine['ram_gb']} GB RAM")
    add(f"- CPU flags (vector/matrix): {' '.join(machine['flags'])}")
    add(
        f"- torch {peak['torch']} ({peak['torch_threads']} threads, capability "
        f"{peak['cpu_capability']}), Python {machine['python']}"
    )
    add(
        f"- load average at start {machine['load_avg'][0]:.1f}, at end "
        f"{os.getloadavg()[0]:.1f} (other work shares these cores: read ratios, not absolutes)"
    )
    mm = peak["matmul"]
    add(
        f"- measured matmul peak: fp32 {mm['fp32']['gflops']:.1f} GFLOP/s "
        f"({mm['fp32']['n']}x{mm['fp32']['n']}), bf16 {mm['bf16']['gflops']:.2f} GFLOP/s "
        f"({mm['bf16']['n']}x{mm['bf16']['n']}); numpy fp32 {mm['fp32_numpy']['gflops']:.1f} "
        "GFLOP/s (2048x2048)"
    )
    add("")
    add(f"## Stages ({cfg['rows']} rows, {cfg['img_size']} px, batch {cfg['batch_size']})\n")
    add(
        "| stage | images (baseline / imgrec) | seconds (baseline / imgrec) "
        "| CPU seconds (baseline / imgrec) | images/s (baseline / imgrec) "
        "| speed imgrec/baseline | peak RSS MB, anonymous in brackets (baseline / imgrec) "
        "| RSS imgrec/baseline |"
    )
    add("|---|---|---|---|---|---|---|---|")
    labels = {
        "fetch": "fetch",
        "prepare": "prepare (baseline: decode+resize per item, paid every epoch)",
        "train": "train (per epoch, after warm-up)",
        "embed": "embed",
        "recommend": f"recommend top-{cfg['top_k']} for every item",
    }
    rounds = results.get("train-rounds")
    if rounds:
        labels["train"] = (
            f"train (seconds: the accuracy run below; images/s: median of {len(rounds)} "
            f"alternating runs of {cfg['round_batches']} batches, speed: median of their ratios)"
        )
    for stage, label in labels.items():
        b, i = results.get(f"{stage}-baseline"), results.get(f"{stage}-imgrec")
        if not b or not i:
            continue
        if stage == "train" and rounds:
            b = {**b, "images_per_s": _median([r["baseline"] for r in rounds])}
            i = {**i, "images_per_s": _median([r["imgrec"] for r in rounds])}
        add(
            f"| {label} | {b['images']} / {i['images']} | {b['seconds']:.1f} / {i['seconds']:.1f} "
            f"| {b['cpu_s']:.1f} / {i['cpu_s']:.1f} "
            f"| {rate(b):.1f} / {rate(i):.1f} | {speed(stage, b, i)} "
            f"| {b['peak_rss_mb']:.0f} ({b['peak_anon_mb']:.0f}) "
            f"/ {i['peak_rss_mb']:.0f} ({i['peak_anon_mb']:.0f}) "
            f"| {_ratio(i['peak_rss_mb'], b['peak_rss_mb'])} |"
        )
    rb, ri = results.get("recommend-baseline"), results.get("recommend-imgrec")
    if rb and ri:
        qb, qi = rb["query_ms"]["median"], ri["query_ms"]["median"]
        add(
            f"| one query vs {ri['images']} (median ms; p95) | - "
            f"| {qb:.2f} ({rb['query_ms']['p95']:.2f}) / {qi:.2f} ({ri['query_ms']['p95']:.2f}) "
            f"| - | - | {qb / qi:.2f}x faster | - | - |"
        )
    add("")
    add(
        "Seconds are each stage's own work, timed inside its process (imports and the benchmark's "
        "own loading excluded); CPU seconds add up every thread and worker process, so CPU "
        "seconds / seconds shows how many cores a stage kept busy. Peak RSS is the process "
        "tree's high-water mark, imports included (torch alone is ~0.7 GB); in brackets its "
        "anonymous part, i.e. without file pages such as a memory-mapped array's, which the "
        "kernel can drop. Baseline processes after fetch load the seed's DataFrame the seed's "
        "way (Dask `head`), outside the timing. Train images/s come from optimizer-step "
        "timestamps, validation excluded; its seconds include validation."
    )
    fb = results.get("fetch-baseline")
    if fb:
        add(
            f"The seed's literal `dd.read_parquet(...).head({cfg['rows']})` returns only "
            f"{fb['literal_head_rows']} rows (Dask reads one partition); the baseline passes "
            "`npartitions=-1` to get the rows the seed meant."
        )
    if rb and ri:
        add(
            f"Recommend: both sides search the same {ri['images']} x 512 matrix of imgrec "
            f"embeddings ({ri['real_embeddings']} real"
            + (
                ", the rest real ones with each entry scaled by 1 + N(0, 0.05), which keeps "
                "their zeros"
                if ri["real_embeddings"] < ri["images"]
                else ""
            )
            + f"; {ri['live_dims']} of 512 dimensions are non-zero somewhere in the catalog, "
            "and imgrec's exact search reads only those); "
            f"precision@{cfg['top_k']} baseline {rb['precision_at_k']:.4f}, imgrec "
            f"{ri['precision_at_k']:.4f}; the two return the same neighbour set for "
            f"{rb['same_neighbours_as_imgrec']:.1%} of items (ties aside)."
        )
    add("")

    tb, ti = results.get("train-baseline"), results.get("train-imgrec")
    if tb and ti:
        add("## Training\n")
        same = tb["init_digest"] == ti["init_digest"]
        batches = cfg["train_batches"] or "all"
        add(
            f"- same initial weights: {'yes' if same else 'NO'} "
            f"(sha256 prefix baseline {tb['init_digest']}, imgrec {ti['init_digest']})"
        )
        add(
            f"- {cfg['epochs']} epochs of {batches} batches of {cfg['batch_size']} from "
            f"{ti['train_images']} training images, the same batches in the same order on both "
            f"sides; validation on the same {cfg['val_images']} images; threads baseline "
            f"{tb['threads']}, imgrec {ti['threads']}; imgrec precision {cfg['precision']}, "
            f"channels_last {cfg['channels_last']}, deterministic algorithms on"
        )
        add("")
        if rounds:
            add(
                f"Throughput in {len(rounds)} alternating short runs ({cfg['round_batches']} "
                "batches each, first step excluded), so both sides share the machine's load:\n"
            )
            add("| run | images/s baseline | images/s imgrec | imgrec/baseline |")
            add("|---|---|---|---|")
            for number, r in enumerate(rounds, 1):
                add(
                    f"| {number} | {r['baseline']:.1f} | {r['imgrec']:.1f} "
                    f"| {r['imgrec'] / r['baseline']:.2f}x |"
                )
            add("")
            add("The accuracy run (its rates are exposed to load changes between the two runs):\n")
        add("| epoch | images/s baseline | images/s imgrec | val acc baseline | val acc imgrec |")
        add("|---|---|---|---|---|")
        for e in range(cfg["epochs"]):
            add(
                f"| {e + 1} | {_fmt(_get(tb['epoch_rates'], e))} "
                f"| {_fmt(_get(ti['epoch_rates'], e))} "
                f"| {_fmt(_get(tb['val_acc'], e), '.4f')} | {_fmt(_get(ti['val_acc'], e), '.4f')} |"
            )
        add("")
        flops = ti["forward_flops"]
        fp32, bf16 = mm["fp32"]["gflops"], mm["bf16"]["gflops"]
        fp32 = max(fp32, mm["fp32_numpy"]["gflops"])  # the higher of torch's and numpy's
        add(
            f"Compute: {flops / 1e9:.3f} GFLOP per image forward (convolutions + linear layers), "
            "training taken as 3x forward.\n"
        )
        best_fp32 = best_fp32_peak(results)
        if bf16 < fp32:
            add(
                f"bf16 has no hardware support here (no avx512_bf16/amx): its matmul runs at "
                f"{bf16 / fp32:.1%} of fp32, so the fp32 peak is the machine's peak.\n"
            )
        train_b, train_i = tb["images_per_s"], ti["images_per_s"]
        peak_b, peak_i = tb["peak_gflops_now"], ti["peak_gflops_now"]
        if rounds:
            train_b = _median([r["baseline"] for r in rounds])
            train_i = _median([r["imgrec"] for r in rounds])
            peak_b = _median([r["baseline_peak"] for r in rounds])
            peak_i = _median([r["imgrec_peak"] for r in rounds])
        rows = [("train, baseline", train_b, 3, peak_b), ("train, imgrec", train_i, 3, peak_i)]
        eb, ei = results.get("embed-baseline"), results.get("embed-imgrec")
        if eb and ei:
            rows += [
                ("embed, baseline", rate(eb), 1, eb["peak_gflops_now"]),
                ("embed, imgrec", rate(ei), 1, ei["peak_gflops_now"]),
            ]
        add(
            "| work | images/s | achieved GFLOP/s | fp32 matmul GFLOP/s around it "
            "| share of that fp32 peak | share of the best fp32 peak | share of bf16 peak |"
        )
        add("|---|---|---|---|---|---|---|")
        for name, images_per_s, factor, peak_now in rows:
            achieved = images_per_s * flops * factor / 1e9
            bf16_share = f"{achieved / bf16:.0%}" if bf16 >= fp32 else "n/a (bf16 slower)"
            add(
                f"| {name} | {images_per_s:.1f} | {achieved:.1f} | {peak_now:.0f} "
                f"| {achieved / peak_now:.0%} | {achieved / best_fp32:.0%} | {bf16_share} |"
            )
        add("")
        add(
            "The fp32 peak moves with the load of other jobs; each row's own is timed (2048 x "
            "2048 torch.matmul) just before and after its work. The best is the highest rate "
            "this run measured anywhere.\n"
        )

    fa = results.get("faiss")
    if fa:
        add(f"## Nearest neighbours at scale: {fa['vectors']:,} random unit vectors, 512-d\n")
        add(
            f"Ground truth: imgrec `ExactIndex` (blocked matmul), "
            f"{fa['exact_query_ms']['median']:.0f} ms per single query (median), "
            f"{fa['exact_batched_ms_per_query']:.1f} ms per query in a batch of "
            f"{cfg['faiss_queries']}. Recall@10 over {cfg['faiss_queries']} random queries; "
            f"latency of one query at a time. The faiss worker's peak RSS: "
            f"{fa['peak_rss_mb']:.0f} MB. Uniform random vectors are the hardest case for "
            "approximate search (no clusters, nearest neighbours barely nearer than the rest).\n"
        )
        add("| index | build s | setting | recall@10 | query ms (median) | query ms (p95) |")
        add("|---|---|---|---|---|---|")
        for entry in fa["indexes"]:
            for row in entry["sweep"]:
                add(
                    f"| {entry['name']} | {entry['build_s']:.0f} | {entry['knob']}={row['knob']} "
                    f"| {row['recall']:.3f} | {row['query_ms']['median']:.2f} "
                    f"| {row['query_ms']['p95']:.2f} |"
                )
        add("")

    add("## DVC no-op\n")
    if dvc.get("measured"):
        add(
            f"- `dvc status` {dvc['status_s']:.1f} s, "
            f"`dvc repro` (nothing changed) {dvc['repro_s']:.1f} s"
        )
    else:
        add(f"- not measured: {dvc['why']}")
    add("")
    add("## Bars (issue 4)\n")
    for line in bars(cfg, results, dvc):
        add(f"- {line}")
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def best_fp32_peak(results: dict) -> float:
    """The highest fp32 matmul rate measured anywhere in the run."""
    mm = results["machine"]["matmul"]
    rates = [mm["fp32"]["gflops"], mm["fp32_numpy"]["gflops"]]
    rates += [r["peak_gflops_now"] for r in results.values() if "peak_gflops_now" in r]
    for r in results.get("train-rounds", []):
        rates += [r["baseline_peak"], r["imgrec_peak"]]
    return max(rates)


def train_speedup(results: dict) -> float:
    """imgrec/baseline training images/s: from the alternating runs when there are some."""
    if results.get("train-rounds"):
        return _median([r["imgrec"] / r["baseline"] for r in results["train-rounds"]])
    return results["train-imgrec"]["images_per_s"] / results["train-baseline"]["images_per_s"]


def _get(values: list, index: int):
    return values[index] if index < len(values) else None


def bars(cfg: dict, results: dict, dvc: dict) -> list[str]:
    out = []

    def bar(ok: bool | None, text: str) -> None:
        out.append(f"{'PASS' if ok else 'not measured' if ok is None else 'FAIL'}: {text}")

    r = results
    if "fetch-imgrec" in r:
        mb = r["fetch-imgrec"]["peak_rss_mb"]
        bar(mb < 1536, f"fetch of {r['fetch-imgrec']['images']} rows peak RSS {mb:.0f} MB (< 1536)")
    cores = machine_info()["cores"]
    if "prepare-imgrec" in r:
        p = r["prepare-imgrec"]
        ips = p["images"] / p["seconds"]
        bar(
            ips >= 800,
            f"prepare {ips:.0f} images/s (>= 800); it costs {p['cpu_s'] / p['images'] * 1000:.2f} "
            f"CPU ms per image, so {cores} idle cores could do at most "
            f"{cores * p['images'] / p['cpu_s']:.0f} images/s",
        )
    if "train-imgrec" in r and "train-baseline" in r:
        ti, tb = r["train-imgrec"], r["train-baseline"]
        speed = train_speedup(r)
        bar(speed >= 2.5, f"train {speed:.2f}x the baseline's images/s (>= 2.5x)")
        acc_i, acc_b = ti["val_acc"][-1], tb["val_acc"][-1]
        bar(
            # Half an image of slack: imgrec's accuracy is a float32 mean.
            acc_i + 0.5 / cfg["val_images"] >= acc_b and ti["init_digest"] == tb["init_digest"],
            f"val accuracy after {cfg['epochs']} epochs from the same weights: imgrec {acc_i:.4f}"
            f" vs baseline {acc_b:.4f} (not worse): "
            f"{round((acc_i - acc_b) * cfg['val_images']):+d} of {cfg['val_images']} images; "
            f"one accuracy's standard error here is "
            f"{(acc_b * (1 - acc_b) / cfg['val_images']) ** 0.5:.4f}",
        )
    if "embed-imgrec" in r:
        e = r["embed-imgrec"]
        ips = e["images"] / e["seconds"]
        text = f"embed {ips:.0f} images/s at {cfg['img_size']} px (>= 500)"
        if "train-imgrec" in r:
            needed = 500 * r["train-imgrec"]["forward_flops"] / 1e9
            peak = best_fp32_peak(r)
            text += (
                f"; 500 images/s needs {needed:.0f} GFLOP/s, {needed / peak:.1f}x the best fp32 "
                "matmul rate measured in this run"
            )
        bar(ips >= 500, text)
    if "recommend-imgrec" in r:
        ri = r["recommend-imgrec"]
        bar(
            ri["seconds"] < 30 and ri["peak_rss_mb"] < 2048,
            f"recommend top-{cfg['top_k']} for all {ri['images']} items in {ri['seconds']:.1f} s"
            f" (< 30) with peak RSS {ri['peak_rss_mb']:.0f} MB (< 2048)",
        )
        q = ri["query_ms"]["median"]
        bar(q < 5, f"one query against {ri['images']}: {q:.2f} ms median (< 5)")
    if "faiss" in r:
        fa = r["faiss"]
        for entry in fa["indexes"]:
            best = max(entry["sweep"], key=lambda row: row["recall"])
            bar(
                True,
                f"measured at {fa['vectors']:,} vectors: {entry['name']} builds in "
                f"{entry['build_s']:.0f} s, recall@10 up to {best['recall']:.3f} at "
                f"{best['query_ms']['median']:.2f} ms/query",
            )
    if dvc.get("measured"):
        bar(dvc["repro_s"] < 5, f"`dvc repro` with nothing changed: {dvc['repro_s']:.1f} s (< 5)")
    else:
        bar(None, f"`dvc repro` no-op: {dvc['why']}")
    return out


# --------------------------------------------------------------------------- main


def train_rounds(cfg: dict, work: Path, rounds: int, batches: int) -> list[dict]:
    """Training throughput in short alternating runs, so both sides share the same load.

    On a shared machine the load can change between two long runs; adjacent short
    runs, in alternating order, see nearly the same conditions.
    """
    round_cfg = {**cfg, "epochs": 1, "train_batches": batches, "val_images": 32}
    round_cfg["save_outputs"] = False
    path = work / "config-rounds.json"
    path.write_text(json.dumps(round_cfg, indent=2))
    out = []
    for number in range(rounds):
        # imgrec first in round 1: it writes the initial weights both sides load.
        sides = ("imgrec", "baseline") if number % 2 == 0 else ("baseline", "imgrec")
        rates = {}
        for side in sides:
            result = run_worker(
                f"train-{side}", path, work, label=f"train-{side}-round{number + 1}"
            )
            rates[side] = result["images_per_s"]
            rates[f"{side}_peak"] = result["peak_gflops_now"]
        out.append(rates)
    return out


def _portable(arg: str) -> str:
    """A command-line word without this machine's absolute paths."""
    if not arg.startswith("/"):
        return arg
    return os.path.relpath(arg, ROOT) if Path(arg).is_relative_to(ROOT) else Path(arg).name


def load_params() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())


STAGES = ("fetch", "prepare", "train", "embed", "recommend", "faiss", "dvc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=40_000, help="catalog rows (default 40000)")
    parser.add_argument("--img-size", type=int, default=128, help="the bars are set at 128 px")
    parser.add_argument(
        "--train-batches",
        type=int,
        default=None,
        help="batches per epoch on both sides (default: full epochs)",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--train-rounds",
        type=int,
        default=3,
        help="alternating short runs per side for training throughput (0: none)",
    )
    parser.add_argument("--round-batches", type=int, default=15, help="batches per round")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images per epoch")
    parser.add_argument(
        "--decode-images", type=int, default=2000, help="images the baseline decode pass reads"
    )
    parser.add_argument(
        "--embed-images", type=int, default=None, help="images imgrec embeds (default: all)"
    )
    parser.add_argument("--baseline-embed-images", type=int, default=2000)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--faiss-vectors", type=int, default=1_000_000)
    parser.add_argument("--faiss-queries", type=int, default=200)
    parser.add_argument("--hnsw-m", type=int, default=16, help="0 skips HNSW")
    parser.add_argument("--hnsw-ef-construction", type=int, default=40)
    parser.add_argument("--hnsw-ef-search", type=int, default=128)
    parser.add_argument("--hnsw-ef-sweep", default="64,256,1024")
    parser.add_argument("--ivf-lists", type=int, default=1024, help="0 skips IVF-Flat")
    parser.add_argument("--ivf-probe-sweep", default="16,64,256")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated stages to skip, of: {','.join(STAGES)}"
    )
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--work-dir", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, help="also write the report (with the command) here")
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.config)
        return

    import make_catalog

    skip = {s for s in args.skip.split(",") if s}
    params = load_params()
    catalog = args.data_dir / f"catalog-{args.rows}"
    if not make_catalog.catalog_is_ready(catalog, args.rows, seed=0):
        print(f"generating the synthetic catalog ({args.rows} rows) ...", flush=True)
        make_catalog.make_catalog(catalog, args.rows, seed=0)
    work = (args.work_dir / f"rows-{args.rows}").resolve()
    for sub in ("results", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    manifest = json.loads((catalog / "manifest.json").read_text())
    cfg = {
        "work": str(work),
        "source": str((catalog / "*.parquet").resolve()),
        "rows": args.rows,
        "raw": str(work / "raw.parquet"),
        "prepared": str(work / "prepared"),
        "init_weights": str(work / "init.pt"),
        "imgrec_model": str(work / "imgrec_model.pt"),
        "baseline_model": str(work / "baseline_model.pt"),
        "embeddings": str(work / "embeddings.npy"),
        "imgrec_neighbors": str(work / "imgrec_neighbors.npy"),
        "num_classes": len(manifest["class_names"]),
        "img_size": args.img_size,
        "device": "cpu" if params["device"] == "auto" else params["device"],
        "train_batches": args.train_batches,
        "epochs": args.epochs,
        "val_images": args.val_images,
        "round_batches": args.round_batches,
        "decode_images": args.decode_images,
        "embed_images": args.embed_images,
        "baseline_embed_images": args.baseline_embed_images,
        "latency_queries": args.latency_queries,
        "faiss_vectors": args.faiss_vectors,
        "faiss_queries": args.faiss_queries,
        "hnsw_m": args.hnsw_m,
        "hnsw_ef_construction": args.hnsw_ef_construction,
        "hnsw_ef_search": args.hnsw_ef_search,
        "hnsw_ef_sweep": [int(v) for v in args.hnsw_ef_sweep.split(",")],
        "ivf_lists": args.ivf_lists,
        "ivf_probe_sweep": [int(v) for v in args.ivf_probe_sweep.split(",")],
        **{
            key: params[key]
            for key in (
                "val_fraction",
                "max_bad_fraction",
                "seed",
                "batch_size",
                "lr",
                "patience",
                "lr_factor",
                "lr_patience",
                "dropout",
                "augment",
                "channels_last",
                "precision",
                "num_threads",
                "top_k",
            )
        },
    }
    config_path = work / "config.json"
    config_path.write_text(json.dumps(cfg, indent=2))

    machine = machine_info()
    started = time.perf_counter()
    print(f"benchmark: {args.rows} rows; work folder {work.relative_to(ROOT)}", flush=True)
    results = {"machine": run_worker("machine", config_path, work)}
    # Each pair runs back to back so both sides see the same background load.
    order = [
        ("fetch", ("fetch-imgrec", "fetch-baseline")),
        ("prepare", ("prepare-imgrec", "prepare-baseline")),
        ("train", ("train-imgrec", "train-baseline")),
        ("embed", ("embed-imgrec", "embed-baseline")),
        ("recommend", ("recommend-imgrec", "recommend-baseline")),
        ("faiss", ("faiss",)),
    ]
    for stage, names in order:
        if stage in skip:
            continue
        if stage == "train" and args.train_rounds:
            results["train-rounds"] = train_rounds(cfg, work, args.train_rounds, args.round_batches)
        for name in names:
            results[name] = run_worker(name, config_path, work)
    dvc = {"measured": False, "why": "skipped"} if "dvc" in skip else dvc_noop(ROOT)
    total = time.perf_counter() - started

    command = "python benchmarks/run.py " + shlex.join(_portable(arg) for arg in sys.argv[1:])
    text = report(cfg, machine, results["machine"], results, dvc)
    text += f"\nTotal benchmark wall time: {total / 60:.1f} min. Command: `{command}`\n"
    print()
    print(text)
    (work / "results" / "all.json").write_text(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
