"""Nearest-neighbour indexes at scale, on vectors shaped like a catalog's real embeddings.

Each class of the catalog (data/embeddings + data/prepared) becomes a Gaussian with the class's
mean and its sample covariance, sampled in proportion to the class sizes, clipped at zero as
the ReLU does and L2-normalised. Prints one Markdown table; benchmarks/RESULTS.md carries the
reading. Usage: benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from imgrec.pipeline import kernels
from imgrec.recommender.catalog import load_catalog
from imgrec.recommender.neighbors import ExactIndex, make_index
from imgrec.recommender.recommend import RecommendConfig, retrieval_metrics

HERE = Path(__file__).resolve().parent
SWEEP = {"ivf": "ivf_nprobe", "hnsw": "hnsw_ef_search"}  # the search-time param each sweeps


def class_model(embeddings: np.ndarray, labels: np.ndarray) -> list[tuple]:
    """Per class: (share of the catalog, mean (D,), residuals scaled so that z @ residuals,
    z ~ N(0, I), has the class's sample covariance)."""
    model = []
    for label in np.unique(labels):
        members = embeddings[labels == label].astype(np.float64)
        mean = members.mean(axis=0)
        scale = np.sqrt(max(len(members) - 1, 1))
        model.append((len(members) / len(labels), mean, (members - mean) / scale))
    return model


def sample(model: list[tuple], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, D) float32 unit rows, class of each), drawn from `class_model`."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(len(model), n, p=[share for share, _, _ in model])
    vectors = np.empty((n, len(model[0][1])), np.float32)
    for label, (_, mean, residuals) in enumerate(model):
        rows = np.flatnonzero(classes == label)
        for start in range(0, len(rows), 65_536):  # bounded memory for z
            chunk = rows[start : start + 65_536]
            z = rng.standard_normal((len(chunk), len(residuals)))
            vectors[chunk] = np.maximum(mean + z @ residuals, 0)  # the ReLU's zeros stay
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors, classes


def label_precision(vectors: np.ndarray, labels: np.ndarray, k: int) -> float:
    """precision@k by label agreement, exact search: how clustered the vectors are."""
    neighbors = ExactIndex(block_rows=256).fit(vectors).search_catalog(k)[1]
    return retrieval_metrics(labels[neighbors], labels)["precision@k"]


def parse_spec(spec: str) -> tuple[str, dict]:
    """'ivf' or 'hnsw:hnsw_m=16,hnsw_ef_construction=40' -> (kind, params)."""
    kind, _, rest = spec.partition(":")
    pairs = (item.split("=", 1) for item in rest.split(",") if item)
    return kind, {name: yaml.safe_load(value) for name, value in pairs}


def latencies_ms(index, queries: np.ndarray, k: int) -> np.ndarray:
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None], k)
        times.append(time.perf_counter() - start)
    return 1000 * np.array(times)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def row(name, build_s, setting, recall_at_k, single_ms, batch_ms) -> str:
    recall_text = "1 (truth)" if recall_at_k is None else f"{recall_at_k:.3f}"
    build_text = "- | -" if build_s is None else "{:.0f} | {:.0f}".format(*build_s)
    return (
        f"| {name} | {build_text} | {setting} | {recall_text} | {np.median(single_ms):.2f} | "
        f"{np.percentile(single_ms, 95):.2f} | {batch_ms:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--embeddings", type=Path, default=Path("data/embeddings"), help="a catalog folder")
    add("--prepared", type=Path, default=Path("data/prepared"), help="its prepared images")
    add("--vectors", type=int, default=1_000_000, help="catalog size to sample")
    add("--queries", type=int, default=1000, help="queries for recall (new samples)")
    add("--single-queries", type=int, default=200, help="of those, timed one at a time")
    add("--exact-single-queries", type=int, default=20, help="timed one at a time, exact")
    add("--index", action="append", help="kind[:param=value,...]; repeatable (default: ivf)")
    add("--nprobe", default="8,16,32,64,128", help="ivf_nprobe values searched")
    add("--ef-search", default="64,128,256", help="hnsw_ef_search values searched")
    add("-k", type=int, default=10, help="neighbours per query (recall@k)")
    add("--seed", type=int, default=0)
    args = parser.parse_args()
    sweeps = {"ivf": args.nprobe, "hnsw": args.ef_search}
    import faiss

    params = yaml.safe_load((HERE.parent / "params.yaml").read_text())

    catalog = load_catalog(args.embeddings, args.prepared)
    real = np.asarray(catalog.embeddings, np.float32)
    model = class_model(real, catalog.labels)
    print(f"command: python benchmarks/indexes.py {shlex.join(sys.argv[1:])}")
    print(f"{kernels.machine_line()}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")  # fmt: skip
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    twin, twin_labels = sample(model, len(real), args.seed + 1)
    print(
        f"catalog: {len(real)} x {real.shape[1]}, {len(model)} classes; label precision@"
        f"{args.k} exact: catalog {label_precision(real, catalog.labels, args.k):.3f}, "
        f"a sample of its size {label_precision(twin, twin_labels, args.k):.3f}; active dims: "
        f"catalog {int(real.any(axis=0).sum())}, sample {int(twin.any(axis=0).sum())}"
    )
    (vectors, _), seconds = clocked(sample, model, args.vectors, args.seed)
    queries = sample(model, args.queries, args.seed + 2)[0]
    print(f"sampled {len(vectors)} vectors in {seconds:.0f} s", flush=True)

    print(
        f"\n| index | build s | build CPU s | search | recall@{args.k} | single query ms (median)"
        " | single query ms (p95) | batch ms/query |\n|---|---|---|---|---|---|---|---|"
    )
    exact, build_s = cpu_clocked(ExactIndex(block_rows=100).fit, vectors)
    (_, truth), batch_s = clocked(exact.search, queries, args.k)
    single = latencies_ms(exact, queries[: args.exact_single_queries], args.k)
    print(row("exact", build_s, "-", None, single, 1000 * batch_s / len(queries)), flush=True)
    del exact

    for spec in args.index or ["ivf"]:
        kind, overrides = parse_spec(spec)
        config = RecommendConfig.from_params(params | overrides | {"index": kind})
        index, build_s = cpu_clocked(make_index(config).fit, vectors)
        name = spec + (f" (nlist {index.nlist_})" if kind == "ivf" else "")
        for value in sorted({int(v) for v in sweeps[kind].split(",")}):
            setattr(index, SWEEP[kind], value)
            (_, found), batch_s = clocked(index.search, queries, args.k)
            single = latencies_ms(index, queries[: args.single_queries], args.k)
            recall_at_k = recall(found, truth)
            batch_ms = 1000 * batch_s / len(queries)
            setting = f"{SWEEP[kind]}={value}"
            print(row(name, build_s, setting, recall_at_k, single, batch_ms), flush=True)
            build_s = None  # printed on the first row only
        del index

    peak = re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]
    print(f"\npeak RSS {int(peak) / 1024:.0f} MB; load average at end {os.getloadavg()[0]:.2f}")


def clocked(function, *args, **kwargs):
    """(what `function` returns, the seconds it took)."""
    start = time.perf_counter()
    return function(*args, **kwargs), time.perf_counter() - start


def cpu_clocked(function, *args, **kwargs):
    """(what `function` returns, (wall seconds, CPU seconds of all this process's threads)):
    on a shared machine the CPU seconds say what an idle one would need."""
    cpu = time.process_time()
    result, seconds = clocked(function, *args, **kwargs)
    return result, (seconds, time.process_time() - cpu)


if __name__ == "__main__":
    main()
