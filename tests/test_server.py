"""`python -m imgrec serve`: real uvicorn in a subprocess, real HTTP, a real Chromium, on a tiny
catalog made by the pipeline's own functions (an untrained model: answers need no skill)."""

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from chromium import CHROMIUM, Chromium
from PIL import Image

from imgrec import cli
from imgrec.data import duplicates
from imgrec.data.image_hashes import ImageHashes, save_image_hashes
from imgrec.data.prepared import load_prepared
from imgrec.errors import ImgrecError
from imgrec.recommender.audit_report import (
    AuditReport,
    DuplicateGroup,
    Outlier,
    SuspectLabel,
    save_report,
)
from imgrec.recommender.catalog import save_catalog
from imgrec.recommender.embed import no_close_match_threshold
from imgrec.recommender.neighbors import ExactIndex
from imgrec.recommender.recommendations import (
    Recommendations,
    load_recommendations,
    save_recommendations,
)
from imgrec.server import ServeConfig
from imgrec.training.checkpoint import checkpoint_md5, load_checkpoint, save_checkpoint
from imgrec.training.inference import catalog_vectors
from imgrec.training.model import CNNClassifier, ModelConfig
from imgrec.training.train import TrainConfig

TOKEN = "s3cret-token"
AUDIT = AuditReport(
    duplicates=[DuplicateGroup((1, 2), "exact", 1.0)],
    suspect_labels=[SuspectLabel(5, "1", "2", 0.8)],
    outliers=[Outlier(7, 0.6)],
    thresholds={"near_duplicate_cosine": 0.999},
)


def make_project(root: Path, prepared: Path) -> Path:
    """A folder laid out as the pipeline writes it (dvc.yaml, models/, data/, reports/)."""
    root.mkdir(exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "models").mkdir()
    (root / "data").mkdir()
    shutil.copytree(prepared, root / "data/catalog/prepared")
    data = load_prepared(root / "data/catalog/prepared")
    torch.manual_seed(0)
    model = CNNClassifier(ModelConfig(num_classes=len(data.class_names)))
    save_checkpoint(
        root / "models/model.pt", model, data.class_names, data.img_size,
        train_config=TrainConfig().identity(1), prepared_md5="",
    )  # fmt: skip
    embed_and_recommend(root, root / "models/model.pt")
    # As prepare writes them: with the audit's report, a query's copies leave its top-k.
    prints = [duplicates.fingerprint(np.asarray(image)) for image in data.images]
    groups, _ = duplicates.duplicate_groups(prints, max_bits=4)
    hashes = ImageHashes(data.row_ids, prints, data.row_ids[groups], 4)
    save_image_hashes(root / "data/catalog/image_hashes.parquet", hashes)
    (root / "reports").mkdir()
    save_report(root / "reports/audit.json", AUDIT)
    return root


def embed_and_recommend(root: Path, model_file: Path, out: Path | None = None) -> None:
    """The embed and recommend stages' outputs for `model_file`, under `out` (default:
    `root`): data/embeddings and data/recommendations.parquet."""
    out = out or root
    data = load_prepared(root / "data/catalog/prepared")
    model = load_checkpoint(model_file).model
    embeddings, appearance = catalog_vectors(model, data.images)  # as the embed stage
    save_catalog(
        out / "data/embeddings", embeddings, appearance, data.row_ids,
        checkpoint_md5(model_file),
        no_close_match_threshold(appearance, data.train_index, data.val_index),
    )  # fmt: skip
    scores, neighbors = ExactIndex().fit(embeddings).search_catalog(3)  # as the recommend stage
    save_recommendations(
        out / "data/recommendations.parquet",
        Recommendations(data.row_ids, data.row_ids[neighbors], scores),
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_prepared: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("project") / "root", tiny_prepared)


@pytest.fixture(scope="module")
def project_without_audit(project: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("no-audit")
    for name in ("dvc.yaml", "models", "data"):
        (root / name).symlink_to(project / name)
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def request(
        self, path: str, body: bytes | None = None, headers: dict | None = None, method=None
    ):
        """(status, headers, body) of one request; a JSON body parsed."""
        method = method or ("GET" if body is None else "POST")
        request = urllib.request.Request(
            self.url + path, data=body, headers=headers or {}, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, reply, content = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, reply, content = error.code, error.headers, error.read()
        if reply.get_content_type() == "application/json" and content:
            return status, reply, json.loads(content)
        return status, reply, content


def start(root: Path, *options: str, env: dict | None = None) -> Server:
    port = free_port()
    log = root.parent / f"server-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "imgrec", "serve", "--port", str(port), "--device", "cpu", *options],
        cwd=root,
        env={**os.environ, **(env or {})},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return Server(f"http://127.0.0.1:{port}", process, log)


def wait_until_up(server: Server, headers: dict | None = None) -> Server:
    deadline = time.monotonic() + 120  # imports and loading, on a loaded machine
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log.read_text()
        try:
            if server.request("/api/health", headers=headers)[0] == 200:
                return server
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the server did not come up:\n{server.log.read_text()}")


def stop(server: Server) -> str:
    server.process.terminate()
    server.process.wait(timeout=60)
    return server.log.read_text()


@pytest.fixture(scope="module")
def servers(project: Path, project_without_audit: Path):
    """Two servers, started together: the defaults (with the audit report), and one with a
    token, two workers and no audit report."""
    plain = start(project)
    guarded = start(project_without_audit, "--workers", "2", env={"IMGREC_TOKEN": TOKEN})
    try:
        yield wait_until_up(plain), wait_until_up(guarded, {"Authorization": f"Bearer {TOKEN}"})
    finally:
        logs = [stop(server) for server in (plain, guarded)]
    for log in logs:
        assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def guarded(servers) -> Server:
    return servers[1]


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def catalog_png(project: Path) -> tuple[bytes, int]:
    """A catalog item's pixels as a PNG (they decode to the same pixels), and its row id."""
    data = load_prepared(project / "data/catalog/prepared")
    position = int(data.val_index[2])
    return png_of(np.asarray(data.images[position])), int(data.row_ids[position])


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"'
            f"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def cli_json(capsys, project: Path, *argv: str) -> dict:
    options = ["--model", str(project / "models/model.pt"), "--device", "cpu"]
    options += ["--catalog", str(project / "data/embeddings")]
    options += ["--prepared", str(project / "data/catalog/prepared")]
    if argv[0] == "recommend":
        options += ["--audit", str(project / "reports/audit.json")]
        options += ["--hashes", str(project / "data/catalog/image_hashes.parquet")]
    assert cli.main([*argv, "--json", *options]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    return answer


def test_recommend_answers_the_query_commands_bits(server, project, catalog_png, tmp_path, capsys):
    png, row_id = catalog_png
    (tmp_path / "query.png").write_bytes(png)
    expected = cli_json(capsys, project, "recommend", str(tmp_path / "query.png"), "--top-k", "4")

    status, _, as_body = server.request("/api/recommend?top_k=4", png)
    assert status == 200, as_body
    status, _, as_form = server.request("/api/recommend?top_k=4", *multipart("image", "q.png", png))
    assert status == 200, as_form
    assert as_body == expected | {"query": None}
    assert as_form == expected | {"query": "q.png"}
    # With the audit's report, a catalog image is a duplicate of itself, left out of its top-k,
    # and no two of the top-k are duplicates of each other (rows 1 and 2 are, in AUDIT).
    assert as_body["duplicate_of"] == [row_id]
    listed = [r["row_id"] for r in as_body["results"]]
    assert row_id not in listed and not {1, 2} <= set(listed)
    assert [r["rank"] for r in as_body["results"]] == [1, 2, 3, 4]
    assert as_body["no_close_match"] is False


def test_classify_answers_the_query_commands_bits(server, project, catalog_png, tmp_path, capsys):
    png, _ = catalog_png
    (tmp_path / "query.png").write_bytes(png)
    expected = cli_json(capsys, project, "classify", str(tmp_path / "query.png"))
    status, _, answer = server.request("/api/classify", *multipart("image", "q.png", png))
    assert status == 200, answer
    assert answer == expected | {"image": "q.png"}


def test_health_names_the_model_file_and_its_md5(server, project):
    status, _, health = server.request("/api/health")
    assert status == 200
    md5 = hashlib.md5((project / "models/model.pt").read_bytes()).hexdigest()
    assert health["model"] == {"file": "models/model.pt", "md5": md5}
    assert health["catalog_size"] == 48
    assert health["status"] == "ok"
    assert health["audit"] is True and health["duplicates_collapsed"] is True


def test_an_item_has_its_label_split_stored_neighbours_and_audit_flags(server, project):
    stored = load_recommendations(project / "data/recommendations.parquet")
    status, _, item = server.request("/api/items/5")
    assert status == 200, item
    neighbor_ids, scores = stored.of(5)
    assert [n["row_id"] for n in item["neighbors"]] == neighbor_ids.tolist()
    assert [n["score"] for n in item["neighbors"]] == [round(float(s), 6) for s in scores]
    assert (item["label"], item["split"]) == ("1", "train")  # label = row id % 4; 36+ are val
    assert item["audit"]["suspect_label"]["suggested"] == "2"
    assert item["flags"] == ["suspect_label"]
    _, _, duplicate = server.request("/api/items/1")
    assert duplicate["audit"]["duplicates"] == [2]
    assert duplicate["audit"]["duplicate_kind"] == "exact"
    _, _, validation = server.request("/api/items/40")
    assert validation["split"] == "val"
    assert validation["audit"]["suspect_label"] is None


@pytest.mark.parametrize(
    ("query", "row_ids", "total"),
    [
        ("label=2&limit=3", [2, 6, 10], 12),
        ("label=2&offset=10", [42, 46], 12),
        ("flag=duplicate", [1, 2], 2),
        ("flag=suspect_label&label=1", [5], 1),
        ("flag=outlier&label=0", [], 0),
    ],
)
def test_the_catalog_pages_filter_by_class_and_audit_flag(server, query, row_ids, total):
    status, _, page = server.request(f"/api/items?{query}")
    assert status == 200, page
    assert [item["row_id"] for item in page["items"]] == row_ids
    assert page["total"] == total


def test_an_items_image_is_its_prepared_pixels(server, project):
    status, headers, png = server.request("/api/items/7/image")
    assert status == 200
    assert headers.get_content_type() == "image/png"
    data = load_prepared(project / "data/catalog/prepared")
    expected = data.images[data.positions(np.array([7]))[0]]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


@pytest.mark.parametrize("path", ["/api/items/4800", "/api/items/4800/image", "/api/items/-1"])
def test_an_unknown_row_id_is_404(server, path):
    status, _, answer = server.request(path)
    assert status == 404
    assert answer == {"detail": f"no catalog item has row id {path.split('/')[3]}."}


NOISE_PNG = png_of(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def bomb() -> bytes:
    """A 12,000 x 12,000 PNG of a few KB: over PIL's decompression-bomb limit."""
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        pytest.param(b"just some text, not an image\n", 422, "accepted formats", id="text"),
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n", 422, "accepted formats", id="eps"),
        pytest.param(NOISE_PNG[: len(NOISE_PNG) // 2], 422, "undecodable", id="cut"),
        pytest.param(bomb(), 413, "decompression bomb", id="bomb"),
        pytest.param(b"", 400, "holds no image", id="empty"),
    ],
)
@pytest.mark.parametrize("route", ["/api/recommend", "/api/classify"])
def test_bad_bytes_get_a_4xx_with_one_sentence(server, route, body, status, says):
    got, _, answer = server.request(route, body, {"Content-Type": "image/png"})
    assert got == status, answer
    (detail,) = answer.values()
    assert says in detail and detail.endswith(".") and "\n" not in detail
    assert "Traceback" not in detail


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/api/recommend?top_k=0", "top_k: input should be greater than or equal to 1."),
        ("/api/recommend?top_k=49", "top_k: 49 is more than the 48 catalog items."),
        ("/api/items?label=cat", "label: no class is called 'cat'."),
        ("/api/items?flag=blurry", "flag: input should be"),
        ("/api/items?limit=100000", "limit: input should be less than or equal to 500."),
    ],
)
def test_bad_parameters_get_a_422_with_one_sentence(server, catalog_png, path, says):
    body = catalog_png[0] if "recommend" in path else None
    status, _, answer = server.request(path, body)
    assert status == 422
    assert answer["detail"].startswith(says), answer


def raw_exchange(url: str, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request's head and body parts over a socket, then read what comes back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(head)
        for part in body_parts:
            connection.sendall(part)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply


def test_an_upload_over_the_cap_is_refused_before_it_is_read(server):
    # A Content-Length of 25 MB and a body of 1 KB: answered at once, without waiting for
    # the rest (a server reading the body first would wait for the 25 MB, and time out).
    head = (
        b"POST /api/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 26214400\r\n\r\n"
    )
    reply = raw_exchange(server.url, head, [bytes(1024)])
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert b"over the 20 MB limit" in reply


def test_a_chunked_upload_is_cut_off_at_the_cap(server):
    head = (
        b"POST /api/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    megabyte = b"%x\r\n%s\r\n" % (2**20, bytes(2**20))
    # 20 MB and one byte, never the final chunk: the server reads all of it, then refuses
    # (bytes sent past what it read would make its close a reset, losing the answer).
    reply = raw_exchange(server.url, head, [megabyte] * 20 + [b"1\r\n\x00\r\n"])
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]


def test_sixteen_concurrent_clients_all_get_the_same_answer(server, catalog_png):
    png, _ = catalog_png

    def client(_: int) -> list:
        return [server.request("/api/recommend?top_k=3", png)[::2] for _ in range(10)]

    with ThreadPoolExecutor(16) as pool:
        answers = [answer for answers in pool.map(client, range(16)) for answer in answers]
    assert len(answers) == 160
    assert all(status == 200 for status, _ in answers)
    assert all(body == answers[0][1] for _, body in answers)  # the same bits, under load


def test_with_a_token_every_api_call_needs_it(guarded, catalog_png):
    png, row_id = catalog_png
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, reply, answer = guarded.request("/api/recommend", png, headers)
        assert status == 401, answer
        assert reply["WWW-Authenticate"] == "Bearer"
        assert guarded.request("/api/items/3", headers=headers)[0] == 401
    with_token = {"Authorization": f"Bearer {TOKEN}"}
    status, _, answer = guarded.request("/api/recommend", png, with_token)
    assert status == 200
    assert answer["results"][0]["row_id"] == row_id  # no audit: it finds itself first
    assert answer["duplicate_of"] == []
    status, _, page = guarded.request("/", headers={})  # the page asks for the token itself
    assert status == 200 and b'type="file"' in page


def test_without_an_audit_report_it_serves_without_flags(guarded):
    with_token = {"Authorization": f"Bearer {TOKEN}"}
    _, _, health = guarded.request("/api/health", headers=with_token)
    assert (health["audit"], health["flags"], health["duplicates_collapsed"]) == (False, [], False)
    _, _, item = guarded.request("/api/items/5", headers=with_token)
    assert (item["audit"], item["flags"]) == (None, None)
    status, _, answer = guarded.request("/api/items?flag=duplicate", headers=with_token)
    assert status == 422 and "no audit report" in answer["detail"]


def test_the_api_is_documented(server):
    status, _, spec = server.request("/openapi.json")
    assert status == 200
    assert {"/api/health", "/api/recommend", "/api/classify", "/api/items/{row_id}"} <= set(
        spec["paths"]
    )
    body = spec["paths"]["/api/recommend"]["post"]["requestBody"]["content"]
    assert {"image/*", "multipart/form-data"} <= set(body)
    assert server.request("/docs")[0] == 200


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0 would serve beyond this machine with no token"),
        (["--host", "::", "--token", ""], "the token is empty"),
        (["--max-upload-mb", "inf"], "--max-upload-mb must be a positive size, got inf."),
        (["--port", "70000"], "--port must be between 1 and 65535, got 70000."),
    ],
)
def test_a_bad_setting_refuses_to_start_with_one_line(project, options, says):
    done = subprocess.run(
        [sys.executable, "-m", "imgrec", "serve", *options],
        cwd=project, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "IMGREC_TOKEN"},
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: {done.stderr.strip().removeprefix('error: ')}"]
    assert says in done.stderr


@pytest.mark.parametrize(
    ("host", "token", "no_token", "starts"),
    [
        ("127.0.0.1", None, False, True),
        ("::1", None, False, True),
        ("localhost", None, False, True),
        ("0.0.0.0", None, False, False),
        ("example.org", None, False, False),
        ("0.0.0.0", TOKEN, False, True),
        ("0.0.0.0", None, True, True),
        ("0.0.0.0", TOKEN, True, False),  # contradictory
    ],
)
def test_which_hosts_need_a_token(project, host, token, no_token, starts):
    names = ("model", "catalog", "prepared", "recommendations", "audit", "hashes")
    paths = dict.fromkeys(names, project)
    make = lambda: ServeConfig(  # noqa: E731
        **paths, model_name="m", host=host, token=token, no_token=no_token
    )
    if starts:
        make()
    else:
        with pytest.raises(ImgrecError):
            make()


def test_a_stale_catalog_refuses_to_start_with_one_line(project, tmp_path, capsys):
    other = tmp_path / "other.pt"
    data = load_prepared(project / "data/catalog/prepared")
    torch.manual_seed(1)
    save_checkpoint(
        other, CNNClassifier(ModelConfig(num_classes=4)), data.class_names, data.img_size,
        train_config=TrainConfig().identity(1), prepared_md5="",
    )  # fmt: skip
    code = cli.main(
        ["serve", "--model", str(other), "--catalog", str(project / "data/embeddings"),
         "--prepared", str(project / "data/catalog/prepared"), "--port", str(free_port())]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [
        "error: the catalog was not made by this model; run `dvc repro` to bring them in step."
    ]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs it)")
def test_the_page_searches_with_an_uploaded_image_and_opens_an_item(server, catalog_png, tmp_path):
    png, row_id = catalog_png
    (tmp_path / "query.png").write_bytes(png)
    browser = Chromium(tmp_path / "profile")
    try:
        page = browser.open(server.url + "/")
        cards = "document.querySelectorAll('#{} .card').length"
        browser.wait_for(page, cards.format("catalog") + " === 48", "the catalog grid")
        document = browser.send("DOM.getDocument", page)["root"]["nodeId"]
        file_input = browser.send("DOM.querySelector", page, nodeId=document, selector="#file")
        browser.send("DOM.setFileInputFiles", page, nodeId=file_input["nodeId"],
                     files=[str(tmp_path / "query.png")])  # fmt: skip
        browser.wait_for(page, cards.format("results") + " === 10", "the top-10")
        first = browser.evaluate(page, "document.querySelector('#results .card').innerText")
        assert first.startswith("#1 row ") and "score 0." in first, first
        copies = browser.evaluate(page, "document.getElementById('duplicate-of').textContent")
        assert f"catalog item(s) {row_id}, left out" in copies, copies
        assert browser.evaluate(page, "document.getElementById('no-close-match').hidden")
        drawn = "[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)"
        browser.wait_for(page, drawn, "the results' images")

        second = browser.evaluate(
            page, "document.querySelectorAll('#results .card')[1].dataset.rowId"
        )
        browser.evaluate(page, "document.querySelectorAll('#results .card')[1].click()")
        browser.wait_for(page, cards.format("neighbors") + " === 3", "the item's neighbours")
        title = browser.evaluate(page, "document.getElementById('item-title').textContent")
        assert title == f"Row {second}"

        loaded = browser.evaluate(page, "performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith((server.url, "blob:")) for url in loaded), loaded
    finally:
        browser.close()
