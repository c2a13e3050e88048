"""`python -m imgrec serve` under hostile but ordinary clients and a pipeline that rebuilds
its files (issue 30): real uvicorn, real sockets, real signals, a file replaced in place,
Chromium for the page's cross-site case. Bounded loops, no timing assertions."""

import asyncio
import gc
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_server import (
    CHROMIUM,
    Chromium,
    Server,
    embed_and_recommend,
    make_project,
    png_of,
    start,
    stop,
    wait_until_up,
)

from imgrec.data.images import decode, decoded_bytes
from imgrec.data.prepared import IMAGES_FILE, ImageRows, load_prepared
from imgrec.server.guards import HostRule, RequestGuard, split_host
from imgrec.training.checkpoint import checkpoint_md5, save_checkpoint
from imgrec.training.model import CNNClassifier, ModelConfig
from imgrec.training.train import TrainConfig

HEADER_WAIT_S = 60  # bounds on loops that wait for the server: generous, never asserted


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_prepared: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("hostile") / "root", tiny_prepared)


@pytest.fixture(scope="module")
def server(project: Path):
    running = wait_until_up(start(project))
    yield running
    log = stop(running)
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def query_png(project: Path) -> bytes:
    data = load_prepared(project / "data/catalog/prepared")
    return png_of(np.asarray(data.images[3]))


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def exchange(server: Server, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes (or 60 s pass)."""
    with socket.create_connection(address(server), timeout=60) as connection:
        connection.sendall(raw)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply


def health(server: Server) -> dict:
    status, _, answer = server.request("/api/health")
    assert status == 200, answer
    return answer


def wait_for(what: str, check, seconds: float = HEADER_WAIT_S):
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)
    return result


def test_idle_and_slow_sockets_neither_lock_out_requests_nor_stay_open(server, query_png):
    # 100 connections: half send nothing, half the start of a head, a byte at a time.
    # uvicorn's own limit counted them all: 63 got every other request a 503.
    sockets = [socket.create_connection(address(server), timeout=60) for _ in range(100)]
    for number, idle in enumerate(sockets):
        if number % 2:
            idle.sendall(b"GET /api/health HTTP/1.1\r\nHo")
    before = health(server)["events"]["header_timeout"]
    status, _, answer = server.request("/api/recommend?top_k=3", query_png)
    assert status == 200, answer
    assert health(server)["status"] == "ok"
    # The server closes each of them (HEADER_TIMEOUT_S after it opened), without a word.
    for idle in sockets:
        assert idle.recv(100) == b""
        idle.close()
    assert health(server)["events"]["header_timeout"] >= before + 100


def test_mid_upload_disconnects_are_one_line_each(server):
    before = health(server)["events"]["disconnected"]
    for _ in range(50):
        with socket.create_connection(address(server), timeout=60) as connection:
            connection.sendall(
                b"POST /api/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n" + bytes(1000)
            )
    wait_for("50 disconnects", lambda: health(server)["events"]["disconnected"] >= before + 50)
    log = server.log.read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log
    assert log.count("left during POST /api/recommend") >= 50


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "10.1.2.3", "localhost.evil"])
def test_a_foreign_host_gets_400_and_no_redirect(server, host):
    for path in ("/api/health", "/api/items/", "/"):
        reply = exchange(server, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), reply[:300]
        assert b"location" not in head.lower() and b"evil" not in body
        assert "Host" in json.loads(body)["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]"])
def test_the_served_host_is_answered(server, host):
    port = address(server)[1]
    reply = exchange(server, f"GET /api/health HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())  # fmt: skip
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]


@pytest.mark.parametrize(
    ("bound", "allowed", "host", "answered"),
    [
        ("127.0.0.1", (), "localhost:8000", True),
        ("127.0.0.1", (), "[::1]:8000", True),
        ("127.0.0.1", (), "192.168.1.5", False),
        ("127.0.0.1", (), "attacker.example", False),
        ("127.0.0.1", ("imgrec.lan",), "IMGREC.lan:8000", True),
        ("0.0.0.0", (), "192.168.1.5:8000", True),  # an address: nothing to rebind
        ("0.0.0.0", (), "attacker.example", False),
        ("::", (), "[fe80::1]", True),
        ("imgrec.lan", (), "imgrec.lan", True),
        ("imgrec.lan", (), "localhost", False),
        ("0.0.0.0", ("*",), "anything.example", True),
    ],
)
def test_which_hosts_are_answered(bound, allowed, host, answered):
    assert HostRule(bound, allowed).allows(host) is answered
    assert split_host("[::1]:80") == "::1"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:9"},  # another local app
    ],
)
def test_a_cross_site_post_is_refused(server, query_png, headers):
    status, _, answer = server.request(
        "/api/classify", query_png, headers | {"Content-Type": "text/plain"}
    )
    assert status == 403, answer
    assert "another site" in answer["detail"]


def test_a_same_origin_post_is_answered(server, query_png):
    origin = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    assert server.request("/api/classify", query_png, origin)[0] == 200


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs it)")
def test_chromium_cannot_post_from_another_site(server, query_png, tmp_path):
    # A document at localhost (one without the page's policy, which allows no other
    # origin) posts to 127.0.0.1: another site, and a "simple" text/plain request that a
    # browser sends without asking first. Chromium sends it; the server refuses it.
    port = address(server)[1]
    before = health(server)["events"]["cross_site"]
    browser = Chromium(tmp_path / "profile")
    try:
        page = browser.open(f"http://localhost:{port}/api/health")
        loaded = "location.hostname === 'localhost' && document.readyState === 'complete'"
        browser.wait_for(page, loaded, "the document at localhost")  # not about:blank
        sent = browser.evaluate(
            page,
            f"fetch('{server.url}/api/classify', {{method: 'POST', mode: 'no-cors',"
            " headers: {'Content-Type': 'text/plain'}, body: 'x'}).then(() => 'sent', e => "
            "String(e))",
        )
        assert sent == "sent"
    finally:
        browser.close()
    assert health(server)["events"]["cross_site"] == before + 1


def test_urllib_posting_25_mb_reads_its_413(server):
    # urllib sends the whole body before reading (no `Expect: 100-continue`): a server
    # that answered and closed at once would reset the connection under it.
    status, _, answer = server.request(
        "/api/recommend", bytes(25 * 2**20), {"Content-Type": "image/png"}
    )
    assert status == 413, answer
    assert answer == {"detail": "the upload is over the 20 MB limit."}
    assert health(server)["status"] == "ok"


def big_image(mode: str, size: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size)).save(buffer, format=fmt, compression="tiff_deflate"
                                       if fmt == "TIFF" else None)  # fmt: skip
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "size", "fmt", "says"),
    [
        ("I;16", 9000, "PNG", "9000x9000 I;16 pixels take 695 MB to decode"),
        ("F", 9400, "TIFF", "9400x9400 F pixels take 1095 MB to decode"),
    ],
)
def test_an_image_over_the_decode_budget_is_413_from_its_header(server, mode, size, fmt, says):
    data = big_image(mode, size, fmt)
    assert len(data) < 2**20  # a small file: PIL's pixel limit lets these through
    before = health(server)["events"]["too_large"]
    status, _, answer = server.request("/api/recommend", data, {"Content-Type": "image/png"})
    assert status == 413, answer
    assert health(server)["events"]["too_large"] == before + 1  # counted as the cap's 413 is
    assert says in answer["detail"] and "over the 256 MB budget" in answer["detail"]
    assert answer["detail"].endswith(".") and "\n" not in answer["detail"]


@pytest.mark.parametrize(
    ("mode", "size", "bytes_per_pixel"),
    [("1", 10, 1 + 4), ("L", 10, 1 + 4), ("P", 10, 1 + 4), ("I;16", 10, 2 + 2 + 1 + 4),
     ("I", 10, 4 + 4 + 1 + 4), ("F", 10, 4 + 4 + 1 + 4), ("RGB", 10, 4), ("RGBA", 10, 4 + 16),
     ("LA", 10, 4 + 16), ("CMYK", 10, 4 + 4)],
)  # fmt: skip
def test_the_decode_budget_counts_bytes_per_pixel_by_mode(mode, size, bytes_per_pixel):
    # Stored as PIL stores the mode, plus its conversion to RGB: what a decode holds at
    # its peak (measured within a few percent, docs/serving.md).
    image = Image.new(mode, (size, size))
    assert decoded_bytes(image, 8) == size * size * bytes_per_pixel


def test_a_palette_with_transparency_is_budgeted_as_composited():
    image = Image.new("P", (10, 10))
    image.info["transparency"] = 0
    assert decoded_bytes(image, 8) == 100 * (1 + 16)  # RGBA, background, composite, RGB


def test_a_jpeg_is_budgeted_at_the_scale_it_decodes_at():
    buffer = io.BytesIO()
    Image.new("RGB", (800, 400)).save(buffer, format="JPEG")
    with Image.open(buffer) as image:
        assert decoded_bytes(image, 32) == 100 * 50 * 7  # 1/8: both sides still >= 32
        assert decoded_bytes(image, 64) == 200 * 100 * 7  # libjpeg's RGB (3) and PIL's (4)


def test_sixteen_bit_and_float_images_decode_to_the_same_pixels_in_strips():
    # `to_rgb` scales them a strip at a time (memory); the pixels are those of one pass.
    rng = np.random.default_rng(0)
    for pixels in (rng.integers(0, 65535, (700, 90), dtype=np.uint16),
                   rng.standard_normal((600, 80)).astype(np.float32)):  # fmt: skip
        image = Image.fromarray(pixels)
        whole = np.asarray(pixels, np.float64)
        low, high = whole.min(), whole.max()
        grey = np.rint((whole - low) * (255.0 / (high - low))).astype(np.uint8)
        expected = np.asarray(
            Image.fromarray(grey, "L").convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
        )
        buffer = io.BytesIO()
        image.save(buffer, format="TIFF")
        np.testing.assert_array_equal(decode(buffer.getvalue(), 16), expected)


def test_head_answers_for_uptime_checks(server):
    for path in ("/api/health", "/"):
        status, _, body = server.request(path, method="HEAD")
        assert status == 200 and body == b""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("DELETE", "/api/health", 405), ("GET", "/static/nothing", 404)],
)
def test_every_error_is_json(server, method, path, status):
    got, headers, answer = server.request(path, method=method)
    assert got == status
    assert headers.get_content_type() == "application/json" and answer["detail"]


@pytest.mark.parametrize("row_id", ["1.0", "+1", "%20%201", "1_0", "0x1", "01e0"])
def test_a_row_id_is_digits_only(server, row_id):
    status, _, answer = server.request(f"/api/items/{row_id}")
    assert status in (404, 422), answer
    assert server.request(f"/api/items/{row_id}/image")[0] in (404, 422)


def test_top_k_is_checked_before_the_image_in_the_apis_words(server):
    status, _, answer = server.request("/api/recommend?top_k=49", b"not an image at all")
    assert status == 422
    assert answer["detail"] == "top_k: 49 is more than the 48 catalog items."


def test_multipart_in_any_case_and_a_part_without_a_filename(server, query_png):
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"\r\n\r\n'.encode()
        + query_png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"Multipart/Form-Data; Boundary={boundary}"}
    status, _, answer = server.request("/api/recommend?top_k=2", body, headers)
    assert status == 200, answer
    status, _, as_body = server.request("/api/recommend?top_k=2", query_png)
    assert answer == as_body  # `query`: null, as for a bare body


def test_the_page_policy_covers_static_index(server):
    _, root_headers, _ = server.request("/")
    status, headers, _ = server.request("/static/index.html")
    assert status == 200
    assert headers["Content-Security-Policy"] == root_headers["Content-Security-Policy"]


def test_sigterm_ends_it_whatever_a_stalled_upload_holds(project):
    running = wait_until_up(start(project, "--limit-concurrency", "1"))
    try:
        stalled = socket.create_connection(address(running), timeout=60)
        stalled.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Length: 100000\r\n\r\n" + bytes(100))  # fmt: skip
        # Held: the one request in progress, so the next is refused at once, as JSON.
        _, headers, answer = wait_for(
            "the upload in progress",
            lambda: (r := running.request("/api/health"))[0] == 503 and r,
        )
        assert headers["Retry-After"] == "1" and "requests already" in answer["detail"]
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=30)  # the server was still up after 40 s
        stalled.close()
    finally:
        if running.process.poll() is None:
            running.process.kill()
    log = running.log.read_text()
    assert "Traceback" not in log, log


def replace_in_place(path: Path, data: bytes) -> None:
    """As `cp other path` does: the same file (inode), truncated and rewritten."""
    with open(path, "r+b") as handle:
        handle.truncate(0)
        handle.write(data)


def test_outputs_rebuilt_under_it_are_reloaded_or_reported_stale(tmp_path, tiny_prepared):
    root = make_project(tmp_path / "root", tiny_prepared)
    running = wait_until_up(start(root))
    try:
        old_md5 = health(running)["model"]["md5"]
        assert running.request("/api/items/7/image")[0] == 200
        # `cp` of a smaller images.npy over the served one: a memory map would SIGBUS.
        other = io.BytesIO()
        np.save(other, np.zeros((4, 16, 16, 3), np.uint8))
        replace_in_place(root / "data/catalog/prepared/images.npy", other.getvalue())
        assert running.request("/api/items/40/image")[0] in (200, 503)
        assert running.process.poll() is None
        wait_for("stale", lambda: health(running)["status"] == "stale")
        assert health(running)["model"]["md5"] == old_md5  # still says what it serves

        # A rebuild, as `dvc repro` writes it: new files renamed into place.
        shutil.copy(tiny_prepared / "images.npy", root / "data/catalog/prepared/images.npy")
        data = load_prepared(root / "data/catalog/prepared")
        torch.manual_seed(1)
        staged = tmp_path / "staged"
        (staged / "data").mkdir(parents=True)
        save_checkpoint(
            staged / "model.pt", CNNClassifier(ModelConfig(num_classes=4)), data.class_names,
            data.img_size, train_config=TrainConfig().identity(1), prepared_md5="",
        )  # fmt: skip
        embed_and_recommend(root, staged / "model.pt", out=staged)
        os.replace(staged / "model.pt", root / "models/model.pt")
        shutil.rmtree(root / "data/embeddings")
        os.replace(staged / "data/embeddings", root / "data/embeddings")
        os.replace(staged / "data/recommendations.parquet", root / "data/recommendations.parquet")
        new_md5 = checkpoint_md5(root / "models/model.pt")
        assert new_md5 != old_md5
        answer = wait_for(
            "the rebuilt outputs served",
            lambda: (h := health(running))["model"]["md5"] == new_md5 and h["status"] == "ok" and h,
        )
        assert answer["stale"] is None and answer["reloads"] >= 1
        assert running.request("/api/items/7/image")[0] == 200
    finally:
        log = stop(running)
    assert "Traceback" not in log, log


def test_with_workers_the_parent_holds_no_model(project):
    running = start(project, "--workers", "2")
    try:
        wait_until_up(running)
        maps = Path(f"/proc/{running.process.pid}/maps").read_text()
        assert "libtorch" not in maps  # the workers load the outputs; the parent only checks
        workers = subprocess.run(["pgrep", "-P", str(running.process.pid)], capture_output=True,
                                 text=True).stdout.split()  # fmt: skip
        assert any("libtorch" in Path(f"/proc/{pid}/maps").read_text() for pid in workers)
    finally:
        log = stop(running)
    assert "Traceback" not in log, log


def test_a_bad_budget_refuses_to_start(project):
    done = subprocess.run(
        [sys.executable, "-m", "imgrec", "serve", "--max-decoded-mb", "0"],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "error: --max-decoded-mb must be a positive size, got 0.0.\n"


def test_a_shutdown_cancel_is_answered_503_and_ends_the_request():
    """uvicorn cancels a request its grace period cut short, and logs a traceback for a
    cancel raised out of the app: the guard answers 503 and lets the task end."""

    async def cut_short(scope, receive, send):
        raise asyncio.CancelledError

    guard = RequestGuard(cut_short, max_bytes=1024, hosts=HostRule("127.0.0.1"),
                         limit_concurrency=4)  # fmt: skip
    scope = {"type": "http", "method": "GET", "path": "/api/health", "headers": []}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 503 and guard.in_progress == 0


def test_image_rows_close_their_file_when_closed_or_let_go(tiny_prepared):
    rows = ImageRows(tiny_prepared / IMAGES_FILE)
    held = rows.file
    assert rows[0].shape[-1] == 3
    rows.close()
    assert held.closed
    rows = ImageRows(tiny_prepared / IMAGES_FILE)
    held = rows.file
    del rows  # a reloaded-away state's images, once no request holds them
    gc.collect()
    assert held.closed
