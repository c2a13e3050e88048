"""What serving costs: `python -m imgrec serve` on the benchmark catalog, under 1, 8 and 32
concurrent clients of `POST /api/recommend`.

The pipeline's outputs are made once in the work folder by the stage scripts themselves,
with the commands dvc.yaml gives them (fetch, prepare at --img-size, train for
--train-batches batches: latency does not depend on how well the model is trained, embed of
every row, recommend), then reused. The server is a process of its own, started as a user
starts it; each client is a thread here with its own keep-alive connection, posting catalog
JPEGs one at a time. One Markdown table is printed; benchmarks/RESULTS.md carries the
reading. Usage: benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import http.client
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from imgrec.pipeline import kernels

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {  # flag: (default, with --smoke, what it sets)
    "rows": (40_000, 100, "catalog rows"),
    "img_size": (128, 32, "prepare's img_size"),
    "train_batches": (4, 1, "training batches (one epoch)"),
    "requests": (400, 8, "requests per client count"),
    "soak": (1000, 16, "requests of the last run, at the most clients"),
}
CLIENTS = "1,8,32"
STAGES = ("fetch", "prepare", "fetch_catalog", "prepare_catalog", "train", "embed", "audit",
          "recommend")  # fmt: skip
STAGE_OUTPUT = {  # what marks a stage done in the work folder
    "fetch": "data/raw.parquet",
    "prepare": "data/prepared/meta.json",
    "fetch_catalog": "data/catalog/raw.parquet",
    "prepare_catalog": "data/catalog/prepared/meta.json",
    "train": "models/model.pt",
    "embed": "data/embeddings/meta.json",
    "audit": "reports/audit.json",
    "recommend": "data/recommendations.parquet",
}


def build_outputs(work: Path, source: str, rows: int, img_size: int, train_batches: int) -> None:
    """Run each stage whose output is missing, as `dvc repro` would, with dvc.yaml's command
    (paths relative to `work`, where params.yaml and a copy of dvc.yaml live)."""
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params |= {"source": source, "rows": rows, "img_size": img_size, "epochs": 1, "device": "cpu"}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # So `python -m imgrec serve`, started in `work`, finds the outputs there by itself.
    shutil.copyfile(ROOT / "dvc.yaml", work / "dvc.yaml")
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        if (work / STAGE_OUTPUT[stage]).exists():
            continue
        command = shlex.split(pipeline[stage]["cmd"])
        command = [sys.executable, str(ROOT / command[1]), *command[2:]]
        if stage == "train":
            command += ["--max-batches", str(train_batches)]
        print(f"{stage} ...", flush=True)
        started = time.perf_counter()
        subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL)
        print(f"{stage}: {time.perf_counter() - started:.0f} s", flush=True)


def query_images(work: Path, count: int) -> list[bytes]:
    """The first `count` fetched JPEGs: catalog images as a client would send them."""
    table = pq.read_table(work / "data/raw.parquet", columns=["image"]).slice(0, count)
    return [image["bytes"] for image in table.column("image").to_pylist()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb(pid: int) -> tuple[float, float]:
    """(PSS MB summed over the server's processes, its largest process's peak RSS MB). PSS
    counts a page shared by the workers (libraries, the memory-mapped catalog) once."""
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    pss = peak = 0.0
    for each in pids:
        rollup = Path(f"/proc/{each}/smaps_rollup").read_text()
        pss += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)[1]) / 1024
        status = Path(f"/proc/{each}/status").read_text()
        peak = max(peak, int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1]) / 1024)
    return pss, peak


def post(connection: http.client.HTTPConnection, body: bytes) -> int:
    connection.request(
        "POST", "/api/recommend?top_k=5", body=body, headers={"Content-Type": "image/jpeg"}
    )
    response = connection.getresponse()
    response.read()
    return response.status


def load(port: int, images: list[bytes], clients: int, requests: int) -> dict:
    """`requests` posts shared out among `clients` threads: rate, latency, errors."""
    latencies, errors, lock = [], 0, threading.Lock()

    def client(number: int) -> None:
        nonlocal errors
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for request in range(number, requests, clients):
            started = time.perf_counter()
            try:
                ok = post(connection, images[request % len(images)]) == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()  # the next request opens a new one
            with lock:
                latencies.append(time.perf_counter() - started)
                errors += not ok
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - started
    return {
        "requests": requests,
        "errors": errors,
        "requests/s": requests / seconds,
        "p50 ms": 1000 * statistics.median(latencies),
        "p99 ms": 1000 * float(np.quantile(latencies, 0.99)),
    }


def start_server(
    work: Path, port: int, workers: int, *options: str
) -> tuple[subprocess.Popen, float]:
    """The server process and the seconds until it answered /api/health."""
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "imgrec", "serve", "--port", str(port), "--log-level", "warning",
         "--workers", str(workers), *options],
        cwd=work,
    )  # fmt: skip
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/health")
            if connection.getresponse().status == 200:
                return server, time.perf_counter() - started
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with status {server.returncode}") from None
            time.sleep(0.2)


def cli_seconds(work: Path, image: bytes) -> float:
    """Seconds of one `python -m imgrec recommend FILE` (a new process), for comparison."""
    path = work / "query.jpg"
    path.write_bytes(image)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "imgrec", "recommend", str(path), "--json"],
        cwd=work, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def batching(work: Path, batch: int, rounds: int = 7) -> str:
    """Whether `batch` images embedded in one pass give the bits of `batch` single passes,
    and the ms per image of each (medians over alternating rounds)."""
    from imgrec.data.prepared import load_prepared
    from imgrec.training.checkpoint import load_checkpoint
    from imgrec.training.inference import catalog_vectors

    model = load_checkpoint(work / "models/model.pt").model
    images = np.asarray(load_prepared(work / "data/prepared").images[:batch])
    passes = {
        "one pass": lambda: np.concatenate(catalog_vectors(model, images), axis=1),
        "single passes": lambda: np.concatenate(
            [
                np.concatenate(catalog_vectors(model, images[i : i + 1]), axis=1)
                for i in range(batch)
            ]
        ),
    }
    vectors, ms = {}, {name: [] for name in passes}
    for _ in range(rounds):
        for name, run in passes.items():
            vectors[name], seconds = clocked(run)
            ms[name].append(1000 * seconds / batch)
    together, alone = vectors.values()
    same = "yes" if np.array_equal(together, alone) else "no"
    speeds = ", ".join(f"{name} {statistics.median(v):.1f} ms an image" for name, v in ms.items())
    difference = np.abs(together - alone).max()
    return f"identical bits: {same} (max |difference| {difference:.2g}); {speeds}"


def clocked(function):
    started = time.perf_counter()
    return function(), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="tiny sizes; flags given beside it still win")
    for name, (default, _, text) in SIZES.items():
        add(f"--{name.replace('_', '-')}", type=int, default=default, help=text)
    add("--clients", default=CLIENTS, help=f"comma-separated client counts (default {CLIENTS})")
    add("--workers", type=int, default=1, help="the server's --workers (default 1)")
    add("--data-dir", type=Path, default=HERE / "data", help="where catalogs are generated")
    add("--work-dir", type=Path, default=HERE / "work", help="where the stages write")
    args = parser.parse_args()
    if args.smoke:
        smoke = {name: sizes[1] for name, sizes in SIZES.items()} | {"clients": "1,2"}
        args = parser.parse_args(namespace=argparse.Namespace(**smoke))
    clients = [int(c) for c in args.clients.split(",")]

    import make_catalog

    catalog = args.data_dir / f"catalog-{args.rows}"
    if not make_catalog.catalog_is_ready(catalog, args.rows):
        print(f"generating a {args.rows}-row catalog ...", flush=True)
        make_catalog.make_catalog(catalog, args.rows)
    work = (args.work_dir / f"serve-{args.rows}-{args.img_size}px").resolve()
    source = str(catalog.resolve() / "*.parquet")
    build_outputs(work, source, args.rows, args.img_size, args.train_batches)

    print(f"command: python benchmarks/serve.py {shlex.join(sys.argv[1:])}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    images = query_images(work, 64)
    cli = cli_seconds(work, images[0])
    port = free_port()
    server, startup = start_server(work, port, args.workers)
    try:
        idle, _ = memory_mb(server.pid)
        load(port, images, 1, 4)  # warm-up: first-call allocations, lazy imports
        runs = []
        for count, requests in [*((c, args.requests) for c in clients), (clients[-1], args.soak)]:
            run = load(port, images, count, requests)
            runs.append((count, run | {"PSS MB": memory_mb(server.pid)[0]}))
        _, peak = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)

    title = f"{args.rows} items at {args.img_size} px, {args.workers} worker(s)"
    print(f"\n## serve: POST /api/recommend?top_k=5, {title}\n")
    print("| clients | requests | errors | requests/s | p50 ms | p99 ms | server PSS MB after |")
    print("|---|---|---|---|---|---|---|")
    for count, run in runs:
        cells = [count, run["requests"], run["errors"]]
        cells += [f"{run[m]:.1f}" for m in ("requests/s", "p50 ms", "p99 ms")]
        print(f"| {' | '.join(map(str, cells))} | {run['PSS MB']:.0f} |")
    print(f"\n- server: {startup:.1f} s from start to its first answer (/api/health)")
    print(f"- one `python -m imgrec recommend FILE --json` (a new process): {cli:.1f} s")
    print(
        f"- server PSS: {idle:.0f} MB loaded, before any query; peak RSS of a process {peak:.0f} MB"
    )
    print(f"- a batch of 8 in one pass vs 8 single passes: {batching(work, 8)}")
    print(f"- {kernels.machine_line()}")
    print(f"- load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
