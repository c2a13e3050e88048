"""The server under hostile but ordinary clients (issue 30's bar), on a tiny catalog built
as benchmarks/serve.py builds one: idle sockets against a health check and a recommend;
the memory of one 9000x9000 16-bit PNG, refused by the decode budget and, with the
budget raised, decoded; how long SIGTERM takes with a stalled upload; the parent's memory
with --workers 2. Numbers only; benchmarks/RESULTS.md carries the reading.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import http.client
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from serve import HERE, build_outputs, free_port, query_images, start_server

from imgrec.pipeline import kernels

CLOSE_WAIT_S = 60  # how long to wait for the server to close idle sockets, or to exit


def status_kb(pid: int, field: str) -> float:
    """A /proc/PID/status field (VmRSS: resident now, VmHWM: the peak), in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)[1]) / 1024


def timed_request(port: int, method: str, path: str, body: bytes | None = None):
    """(status, or why there was none; seconds) of one request on a new connection."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException) as error:
        status = type(error).__name__
    finally:
        connection.close()
    return status, time.perf_counter() - started


def sixteen_bit_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("I;16", (side, side), 1000).save(buffer, format="PNG")
    return buffer.getvalue()


def idle_sockets(port: int, count: int, image: bytes) -> list[str]:
    """Health and recommend, with no idle socket and with `count` held open (half silent,
    half a started head), then how long the server takes to close the idle ones."""
    timed_request(port, "POST", "/api/recommend?top_k=5", image)  # warm-up: first-call work
    rows = []
    for held in (0, count):
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(held)]
        for number, idle in enumerate(sockets):
            if number % 2:
                idle.sendall(b"GET / HTTP/1.1\r\nHo")
        opened = time.perf_counter()
        health = timed_request(port, "GET", "/api/health")
        recommend = timed_request(port, "POST", "/api/recommend?top_k=5", image)
        closed = []
        for idle in sockets:
            idle.settimeout(max(1.0, CLOSE_WAIT_S - (time.perf_counter() - opened)))
            try:
                idle.recv(1)  # b"": the server closed it
                closed.append(time.perf_counter() - opened)
            except TimeoutError:
                closed.append(float("inf"))
            idle.close()
        last = max(closed, default=None)
        shown = "-" if last is None else f"not in {CLOSE_WAIT_S} s" if last > 1e9 else f"{last:.1f}"
        cells = [held, health[0], f"{1000 * health[1]:.0f}", recommend[0],
                 f"{1000 * recommend[1]:.0f}", shown]  # fmt: skip
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    return rows


def big_upload(work: Path, budget_mb: float | None, png: bytes) -> str:
    port = free_port()
    options = ["--max-decoded-mb", str(budget_mb)] if budget_mb else []
    server, _ = start_server(work, port, 1, *options)
    try:
        timed_request(port, "POST", "/api/recommend?top_k=5", sixteen_bit_png(64))  # warm
        idle, before = status_kb(server.pid, "VmRSS"), status_kb(server.pid, "VmHWM")
        status, seconds = timed_request(port, "POST", "/api/recommend?top_k=5", png)
        peak, after = status_kb(server.pid, "VmHWM"), status_kb(server.pid, "VmRSS")
    finally:
        server.terminate()
        server.wait(timeout=60)
    budget = f"{budget_mb:g} MB" if budget_mb else "default"
    return (f"| {budget} | {status} | {seconds:.2f} | {idle:.0f} | {max(before, peak):.0f} | "
            f"{after:.0f} |")  # fmt: skip


def sigterm_with_stalled_upload(work: Path) -> float:
    port = free_port()
    server, _ = start_server(work, port, 1)
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: 1000000\r\n\r\n" + bytes(1000))  # fmt: skip
    timed_request(port, "GET", "/api/health")  # the stalled one is in by now
    started = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=CLOSE_WAIT_S)
        return f"exited after {time.perf_counter() - started:.1f} s"
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return f"still running after {CLOSE_WAIT_S} s (killed)"
    finally:
        stalled.close()


def workers_memory(work: Path) -> str:
    port = free_port()
    server, _ = start_server(work, port, 2)
    try:
        # Health answers once one worker is up; wait (a minute at most) for both to load.
        for _ in range(300):
            children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text()
            workers = sorted(status_kb(int(pid), "VmRSS") for pid in children.split())
            if len(workers) >= 2 and workers[-2] > 200:
                break
            time.sleep(0.2)
        parent = status_kb(server.pid, "VmRSS")
    finally:
        server.terminate()
        server.wait(timeout=60)
    shown = ", ".join(f"{w:.0f}" for w in workers)
    return f"parent {parent:.0f} MB RSS; its children (workers, a helper) {shown} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rows", type=int, default=400, help="catalog rows (the issue's: 400)")
    add("--img-size", type=int, default=32, help="prepare's img_size (the issue's: 32)")
    add("--idle", type=int, default=100, help="idle sockets held open")
    add("--side", type=int, default=9000, help="side of the 16-bit PNG")
    add("--data-dir", type=Path, default=HERE / "data", help="where catalogs are generated")
    add("--work-dir", type=Path, default=HERE / "work", help="where the stages write")
    add("--budgets", default="default,1024", help="decode budgets, MB (`default`: the server's)")
    add("--smoke", action="store_true", help="tiny sizes (100 rows, 10 sockets, 3000 px)")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.idle, args.side = 100, 10, 3000

    import make_catalog

    catalog = args.data_dir / f"catalog-{args.rows}"
    if not make_catalog.catalog_is_ready(catalog, args.rows):
        make_catalog.make_catalog(catalog, args.rows)
    work = (args.work_dir / f"serve-{args.rows}-{args.img_size}px").resolve()
    build_outputs(work, str(catalog.resolve() / "*.parquet"), args.rows, args.img_size, 1)

    print(f"command: python benchmarks/serve_hostile.py {shlex.join(sys.argv[1:])}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    image = query_images(work, 1)[0]
    port = free_port()
    server, _ = start_server(work, port, 1)
    try:
        rows = idle_sockets(port, args.idle, image)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"\n## serve_hostile: {args.rows} items at {args.img_size} px\n")
    print("| idle sockets | health | ms | recommend | ms | all idle closed after s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))

    png = sixteen_bit_png(args.side)
    print(f"\n{args.side}x{args.side} 16-bit grey PNG, {len(png) / 1024:.0f} KB:\n")
    print("| decode budget | status | s | RSS before MB | peak RSS MB | RSS after MB |")
    print("|---|---|---|---|---|---|")
    for budget in args.budgets.split(","):
        print(big_upload(work, None if budget == "default" else float(budget), png))
    print(f"\n- SIGTERM with a stalled upload: {sigterm_with_stalled_upload(work)}")
    print(f"- --workers 2: {workers_memory(work)}")
    print(f"- {kernels.machine_line()}")
    print(f"- load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
