"""Which library draws the catalog map: 2-D projections of catalog-shaped vectors compared
by quality, time and peak memory, each method in its own Python process.

Vectors: `--rows` samples shaped like the catalog's embeddings (`indexes.sample`: each class
a Gaussian with the class's mean and covariance, clipped at zero, L2-normalised). Every
method gets the same exact cosine neighbours (`neighbors.ExactIndex`) where it takes them,
so it is the layout that is compared, not the neighbour search.

- pca: scikit-learn's PCA (the baseline: linear, no neighbours)
- umap: umap-learn, `random_state` set (which makes it single-threaded), precomputed kNN
- opentsne: openTSNE's FFT-accelerated t-SNE, precomputed kNN (perplexity 30, 90 neighbours),
  on 2 threads: `catalog_map.project`, what the catalog_map stage runs
- sklearn_tsne: scikit-learn's Barnes-Hut t-SNE (its own neighbour search)

Quality, on `--sample` items drawn once: trustworthiness (scikit-learn, 10 neighbours, within
the sample), kNN preservation (the share of each sampled item's 10 nearest in the full
vectors that are among its 10 nearest on the map, over all `--rows`), and label agreement@10
on the map beside that in the vectors (how well classes stay apart). Determinism: the method
run twice with one seed in one process, and whether the two maps are the same bytes.

Prints a Markdown table; benchmarks/RESULTS.md carries the reading.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
METHODS = ("pca", "umap", "opentsne", "sklearn_tsne")
NEIGHBORS = 10  # judged by trustworthiness and kNN preservation


def exact_knn(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) cosine distances and indices of each item's k nearest others."""
    from imgrec.recommender.neighbors import ExactIndex

    scores, indices = ExactIndex().fit(vectors).search_catalog(k)
    return np.maximum(1 - scores, 0).astype(np.float32), indices


def project(method: str, vectors: np.ndarray, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(vectors)
    if method == "umap":
        import umap

        distances, indices = exact_knn(vectors, 14)
        # UMAP's precomputed kNN lists each item as its own nearest, at distance 0.
        n = len(vectors)
        indices = np.hstack([np.arange(n)[:, None], indices])
        distances = np.hstack([np.zeros((n, 1), np.float32), distances])
        reducer = umap.UMAP(
            n_neighbors=15,
            metric="cosine",
            random_state=seed,
            precomputed_knn=(indices, distances, None),
        )
        return reducer.fit_transform(vectors)
    if method == "opentsne":  # what the catalog_map stage runs
        from imgrec.recommender.catalog_map import project as catalog_map_projection

        return catalog_map_projection(vectors, seed, threads=2)
    if method == "sklearn_tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, metric="cosine", init="pca", random_state=seed).fit_transform(vectors)
    raise ValueError(method)


def run_one(method: str, vectors_path: str, seed: int, repeat: bool) -> dict:
    """In a child process: the map, its seconds, this process's peak RSS above the data."""
    vectors = np.load(vectors_path)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # MB on Linux
    start = time.perf_counter()
    coordinates = project(method, vectors, seed)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu  # on a shared machine, steadier than wall
    result = {"seconds": seconds, "cpu": cpu, "peak_mb": usage.ru_maxrss / 1024,
              "rss_before_mb": before}  # fmt: skip
    if repeat:
        again = project(method, vectors, seed)
        result["same_bytes"] = bool(np.asarray(again).tobytes() == coordinates.tobytes())
    np.save(vectors_path.replace("vectors.npy", f"{method}.npy"), coordinates.astype(np.float32))
    return result


def knn_preservation(vectors, coordinates, sample, truth) -> float:
    from sklearn.neighbors import NearestNeighbors

    found = NearestNeighbors(n_neighbors=NEIGHBORS + 1).fit(coordinates)
    found = found.kneighbors(coordinates[sample], return_distance=False)[:, 1:]
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def label_agreement(coordinates, labels, sample) -> float:
    from sklearn.neighbors import NearestNeighbors

    found = NearestNeighbors(n_neighbors=NEIGHBORS + 1).fit(coordinates)
    found = found.kneighbors(coordinates[sample], return_distance=False)[:, 1:]
    return float((labels[found] == labels[sample][:, None]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--embeddings", default="data/embeddings", help="a catalog's data/embeddings")
    add("--prepared", default="data/catalog/prepared", help="its prepared data")
    add("--rows", type=int, default=40_000)
    add("--sample", type=int, default=2_000, help="items judged for quality")
    add("--seed", type=int, default=42)
    add("--method", action="append", choices=METHODS, help="default: all")
    add("--repeat", action="store_true", help="run each method twice: same bytes?")
    add("--child", nargs=2, metavar=("METHOD", "VECTORS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*args.child, args.seed, args.repeat)))
        return

    import indexes

    from imgrec.pipeline import kernels
    from imgrec.recommender.catalog import load_catalog

    catalog = load_catalog(args.embeddings, args.prepared)
    model = indexes.class_model(np.asarray(catalog.embeddings), catalog.labels)
    vectors, labels = indexes.sample(model, args.rows, args.seed)
    sample = np.sort(np.random.default_rng(args.seed).choice(args.rows, args.sample, False))
    _, truth_all = exact_knn(vectors, NEIGHBORS)
    truth = truth_all[sample]
    vector_agreement = float((labels[truth] == labels[sample][:, None]).mean())

    from sklearn.manifold import trustworthiness

    print(kernels.machine_line())
    print(
        f"\n## projection: {args.rows} vectors of {vectors.shape[1]} dims sampled like "
        f"{args.embeddings} ({len(model)} classes); quality on {args.sample} items\n"
    )
    print(
        "| method | seconds | CPU seconds | peak RSS MB (data loaded: MB) | trustworthiness@10 "
        "| kNN preserved@10 | label agreement@10 (vectors: "
        f"{vector_agreement:.3f}) | same bytes twice |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        vectors_path = str(Path(tmp) / "vectors.npy")
        np.save(vectors_path, vectors)
        for method in args.method or METHODS:
            command = [
                sys.executable,
                __file__,
                "--seed",
                str(args.seed),
                "--child",
                method,
                vectors_path,
            ] + (["--repeat"] if args.repeat else [])
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"| {method} | failed: {done.stderr.strip().splitlines()[-1:]} |||||")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            coordinates = np.load(vectors_path.replace("vectors.npy", f"{method}.npy"))
            trust = trustworthiness(vectors[sample], coordinates[sample], n_neighbors=NEIGHBORS)
            kept = knn_preservation(vectors, coordinates, sample, truth)
            agree = label_agreement(coordinates, labels, sample)
            print(
                f"| {method} | {result['seconds']:.1f} | {result['cpu']:.1f} "
                f"| {result['peak_mb']:.0f} "
                f"({result['rss_before_mb']:.0f}) | {trust:.3f} | {kept:.3f} | {agree:.3f} "
                f"| {result.get('same_bytes', '')} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
