"""The review loop in `imgrec serve`: the catalog map and review routes (FastAPI's TestClient
over the real app), and the page in a real headless Chromium against real uvicorn: it draws
every catalog item, a click on a point opens it, accepting a suggestion writes the
corrections file. The catalog is test_server's tiny one (48 items, an untrained model)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chromium import CHROMIUM, Chromium
from fastapi.testclient import TestClient
from test_server import make_project, png_of, start, stop, wait_until_up

from imgrec.data.prepared import load_prepared, save_prepared_labels
from imgrec.errors import ImgrecError
from imgrec.recommender.map_coordinates import MapCoordinates, save_coordinates
from imgrec.server import ServeConfig, Served, create_app

TOKEN = "review-token"
HEADER = "row_id,label_seen,decision,new_label\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_prepared: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("project") / "root", tiny_prepared)


@pytest.fixture(scope="module")
def map_file(project: Path, tmp_path_factory) -> Path:
    """A map of the tiny catalog: its items on a 7 x 7 lattice, so no two are near."""
    row_ids = load_prepared(project / "data/catalog/prepared").row_ids
    lattice = np.stack([row_ids % 7, row_ids // 7], axis=1).astype(np.float32)
    path = tmp_path_factory.mktemp("map") / "catalog_map.csv"
    save_coordinates(path, MapCoordinates(row_ids, lattice))
    return path


def config_for(project: Path, **options) -> ServeConfig:
    paths = {
        "model": project / "models/model.pt",
        "catalog": project / "data/embeddings",
        "prepared": project / "data/catalog/prepared",
        "recommendations": project / "data/recommendations.parquet",
        "audit": project / "reports/audit.json",
        "hashes": project / "data/catalog/image_hashes.parquet",
    }
    return ServeConfig(**paths, model_name="models/model.pt", device="cpu", **options)


@pytest.fixture(scope="module")
def served(project: Path) -> Served:
    return Served.load(config_for(project))


def client(project, served, **options) -> TestClient:
    app = create_app(config_for(project, **options), served)
    return TestClient(app, base_url="http://127.0.0.1:8000")  # a Host the server answers


def test_the_map_answers_every_item_with_its_class_and_flags(project, served, map_file):
    points = client(project, served, catalog_map=map_file).get("/api/map").json()
    assert points["row_ids"] == list(range(48))
    assert points["x"][:8] == [0, 1, 2, 3, 4, 5, 6, 0] and points["y"][7] == 1
    assert points["labels"] == [r % 4 for r in range(48)] and points["classes"] == list("0123")
    bits = {r: b for r, b in enumerate(points["flags"]) if b}  # test_server's AUDIT
    assert bits == {5: 0b1, 1: 0b10, 2: 0b10, 7: 0b100}
    assert points["flag_names"] == ["suspect_label", "duplicate", "outlier", "leak"]


def test_without_a_map_the_map_route_says_so_in_one_sentence(project, served, tmp_path):
    answer = client(project, served, catalog_map=tmp_path / "none.csv").get("/api/map")
    assert answer.status_code == 404
    assert answer.json() == {
        "detail": f"no catalog map at {tmp_path / 'none.csv'}; run `dvc repro` to make it."
    }


def test_a_map_of_another_catalog_is_not_served(project, served, tmp_path):
    save_coordinates(tmp_path / "map.csv", MapCoordinates(np.arange(3), np.zeros((3, 2))))
    answer = client(project, served, catalog_map=tmp_path / "map.csv").get("/api/map")
    assert answer.status_code == 404 and "is not of this catalog" in answer.json()["detail"]


def test_review_lists_what_the_audit_found(project, served, tmp_path):
    corrections = tmp_path / "corrections.csv"
    corrections.write_text(HEADER + "7,3,keep,\n")
    found = client(project, served, corrections=corrections).get("/api/review").json()
    assert found["writable"] is False
    assert found["read_only_because"].endswith("started without --review.")
    assert found["suspect_labels"] == [{"row_id": 5, "label": "1", "suggested": "2", "score": 0.8}]
    assert found["duplicates"] == [{"row_ids": [1, 2], "kind": "exact", "similarity": 1.0}]
    assert found["decisions"] == {"7": {"decision": "keep", "new_label": ""}}


def test_without_the_flag_writing_is_refused_with_403(project, served, tmp_path):
    corrections = tmp_path / "corrections.csv"
    decision = {"decisions": [{"row_id": 5, "decision": "relabel", "new_label": "2"}]}
    answer = client(project, served, corrections=corrections).post("/api/review", json=decision)
    assert answer.status_code == 403
    assert answer.json() == {
        "detail": "review is read-only: this server was started without --review."
    }
    assert not corrections.exists()


def test_with_the_flag_decisions_are_written_sorted_one_row_per_item(project, served, tmp_path):
    corrections = tmp_path / "labels/corrections.csv"
    reviewer = client(project, served, corrections=corrections, review=True)
    accept = [{"row_id": 5, "decision": "relabel", "new_label": "2"}]
    assert reviewer.post("/api/review", json={"decisions": accept}).json() == {
        "written": 1, "forgotten": 0, "corrections": 1,
    }  # fmt: skip
    assert corrections.read_text() == HEADER + "5,1,relabel,2\n"
    keep_one = [{"row_id": 2, "decision": "drop"}, {"row_id": 1, "decision": "keep"}]
    assert reviewer.post("/api/review", json={"decisions": keep_one}).status_code == 200
    assert corrections.read_text() == HEADER + "1,1,keep,\n2,2,drop,\n5,1,relabel,2\n"
    again = [{"row_id": 5, "decision": "keep"}, {"row_id": 1, "decision": "undo"}]
    assert reviewer.post("/api/review", json={"decisions": again}).json()["corrections"] == 2
    assert corrections.read_text() == HEADER + "2,2,drop,\n5,1,keep,\n"
    assert os.listdir(corrections.parent) == ["corrections.csv"]  # no temp file left behind
    assert reviewer.get("/api/review").json()["decisions"]["5"] == {
        "decision": "keep",
        "new_label": "",
    }


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        ('{"decisions": [{"row_id": 5, "decision": "keep"}]}', {"Content-Type": "text/plain"},
         415, "decisions are sent as JSON (Content-Type: application/json)."),
        ("decisions=5", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "as JSON"),
        ('{"decisions": [{"row_id": 4800, "decision": "keep"}]}', {}, 422,
         "row 4800 is not in the catalog"),
        ('{"decisions": [{"row_id": 4800, "decision": "undo"}]}', {}, 422,
         "row 4800 has no decision to undo."),
        ('{"decisions": [{"row_id": 5, "decision": "keep"}, {"row_id": 5, "decision": "undo"}]}',
         {}, 422, "row 5 has two decisions in one request; send one."),
        ('{"decisions": [', {}, 422, "body: invalid JSON"),
        ('{"decisions": [{"row_id": 5, "decision": "relabel", "new_label": "9"}]}', {}, 422,
         "'9' is not a class; the classes are 0, 1, 2, 3."),
        ('{"decisions": [{"row_id": 5, "decision": "drop", "new_label": "2"}]}', {}, 422,
         "only a relabel has a new_label"),
        ('{"decisions": [{"row_id": 5, "decision": "relabel", "new_label": "1"}]}', {}, 422,
         "relabel to its own label"),
        ('{"decisions": [{"row_id": 6, "decision": "keep"}, {"row_id": 5, "decision": "sell"}]}',
         {}, 422, "decisions.1.decision: input should be"),
        ('{"decisions": []}', {}, 422, "decisions: list should have at least 1 item"),
    ],
)  # fmt: skip
def test_a_bad_decision_writes_nothing_and_gets_one_sentence(
    project, served, tmp_path, body, headers, status, says
):
    corrections = tmp_path / "corrections.csv"
    reviewer = client(project, served, corrections=corrections, review=True)
    sent = reviewer.post(
        "/api/review", content=body, headers={"Content-Type": "application/json"} | headers
    )
    assert sent.status_code == status
    assert says in sent.json()["detail"] and "\n" not in sent.json()["detail"]
    assert not corrections.exists()


def test_a_chunked_body_over_the_cap_is_413_not_a_parse_error(project, served, tmp_path):
    corrections = tmp_path / "corrections.csv"
    reviewer = client(project, served, corrections=corrections, review=True, max_upload_mb=0.001)
    before = health_events(reviewer)["too_large"]

    def chunks():  # no Content-Length: the guard counts the bytes as FastAPI reads them
        yield b'{"decisions": [' + b" " * 2000
        yield b'{"row_id": 5, "decision": "keep"}]}'

    sent = reviewer.post("/api/review", content=chunks(),
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert sent.status_code == 413, sent.text
    assert sent.json()["detail"].startswith("the upload is over the 0.000")
    assert health_events(reviewer)["too_large"] == before + 1
    assert not corrections.exists()


def health_events(reviewer: TestClient) -> dict:
    return reviewer.get("/api/health").json()["events"]


def test_an_applied_drop_can_be_undone(project, served, tmp_path):
    """A drop prepare applied took the row out of the labels: undo checks the file."""
    corrections = tmp_path / "corrections.csv"
    corrections.write_text(HEADER + "4800,1,drop,\n5,1,keep,\n")
    reviewer = client(project, served, corrections=corrections, review=True)
    undo = {"decisions": [{"row_id": 4800, "decision": "undo"}]}
    assert reviewer.post("/api/review", json=undo).json() == {
        "written": 0, "forgotten": 1, "corrections": 1,
    }  # fmt: skip
    assert corrections.read_text() == HEADER + "5,1,keep,\n"


def test_the_review_is_loaded_with_the_served_state_not_per_request(
    project, served, tmp_path, monkeypatch
):
    def no_load(*args, **kwargs):
        raise AssertionError("Review.load in a request")

    monkeypatch.setattr("imgrec.recommender.review.Review.load", no_load)
    corrections = tmp_path / "corrections.csv"
    reviewer = client(project, served, corrections=corrections, review=True)
    assert reviewer.get("/api/review").json()["writable"] is True
    decision = {"decisions": [{"row_id": 5, "decision": "keep"}]}
    assert reviewer.post("/api/review", json=decision).status_code == 200
    assert served.review.prepared.images is None  # labels only: nothing mapped


def test_the_map_answer_is_kept_with_the_served_state(project, served, map_file):
    app = create_app(config_for(project, catalog_map=map_file), served)
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/map").status_code == 200
    assert served.map_answer is not None and served.map_answer[1] is not None
    assert not hasattr(app.state, "catalog_map")  # a reloaded-away state is not kept alive


def test_with_a_token_review_needs_it(project, served, tmp_path):
    corrections = tmp_path / "corrections.csv"
    reviewer = client(project, served, corrections=corrections, review=True, token=TOKEN)
    decision = {"decisions": [{"row_id": 5, "decision": "keep"}]}
    assert reviewer.post("/api/review", json=decision).status_code == 401
    assert reviewer.get("/api/map").status_code == 401
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assert reviewer.post("/api/review", json=decision, headers=authorized).status_code == 200
    assert corrections.read_text() == HEADER + "5,1,keep,\n"


def test_a_catalog_apart_from_the_training_data_is_reviewed_read_only(tiny_prepared, tmp_path):
    """Corrections name the training data's rows: a catalog of its own (no split) cannot
    take them, whatever the server's flag."""
    root = make_project(tmp_path / "root", tiny_prepared)
    apart = root / "data/catalog/prepared"  # as prepare_catalog writes a catalog of its own
    data = load_prepared(apart)
    save_prepared_labels(
        apart, labels=data.labels, row_ids=data.row_ids, train_index=np.arange(0),
        val_index=np.arange(0), class_names=data.class_names, img_size=data.img_size,
    )  # fmt: skip
    corrections = tmp_path / "corrections.csv"
    config = config_for(root, corrections=corrections, review=True)
    reviewer = TestClient(create_app(config), base_url="http://127.0.0.1:8000")
    found = reviewer.get("/api/review").json()
    assert found["writable"] is False
    assert "the catalog is apart from the training data" in found["read_only_because"]
    decision = {"decisions": [{"row_id": 5, "decision": "keep"}]}
    refused = reviewer.post("/api/review", json=decision)
    assert refused.status_code == 422 and refused.json()["detail"] == found["read_only_because"]
    assert not corrections.exists()


@pytest.mark.parametrize(
    ("options", "starts"),
    [
        ({"review": True}, True),
        ({"review": True, "host": "0.0.0.0", "token": TOKEN}, True),
        ({"review": True, "host": "0.0.0.0", "no_token": True}, False),  # anyone could relabel
        ({"host": "0.0.0.0", "no_token": True}, True),  # read-only review: as before
    ],
)
def test_review_off_localhost_needs_the_token(project, tmp_path, options, starts):
    make = lambda: config_for(project, corrections=tmp_path / "c.csv", **options)  # noqa: E731
    if starts:
        make()
    else:
        with pytest.raises(ImgrecError, match="needs a token"):
            make()


def test_serve_defaults_the_corrections_file_to_labels(project, map_file):
    from imgrec import cli

    args = cli.build_parser().parse_args(["serve", "--review"])
    cli.resolve_defaults(args, project)
    assert args.corrections == project / "labels/corrections.csv"
    assert args.map == project / "reports/catalog_map.csv"
    assert args.review is True


@pytest.fixture(scope="module")
def reviewing(project: Path, map_file: Path, tmp_path_factory):
    """Real uvicorn with --review, the map and a corrections file of its own."""
    corrections = tmp_path_factory.mktemp("labels") / "corrections.csv"
    started = start(project, "--review", "--map", str(map_file), "--corrections", str(corrections))
    try:
        yield wait_until_up(started), corrections
    finally:
        log = stop(started)
    assert "Traceback" not in log, log


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs it)")
def test_the_page_maps_every_item_opens_a_clicked_point_and_writes_a_review(
    reviewing, project, tmp_path
):
    live, corrections = reviewing
    data = load_prepared(project / "data/catalog/prepared")
    (tmp_path / "query.png").write_bytes(png_of(np.asarray(data.images[40])))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    browser = Chromium(tmp_path / "profile")
    try:
        page = browser.open(live.url + "/")
        # The empty search panel shows nothing, not a broken image (issue 30).
        browser.wait_for(
            page, "document.querySelectorAll('#catalog .card').length === 48", "the grid"
        )
        assert (
            browser.evaluate(page, "getComputedStyle(document.getElementById('query')).display")
            == "none"
        )

        canvas = "document.getElementById('map-canvas')"
        browser.wait_for(page, f"{canvas}.dataset.drawn === '48'", "every item on the map")
        painted = browser.evaluate(page, f"""(() => {{
            const c = {canvas};
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] !== 255 || d[i + 1] !== 255) n++;
            return n; }})()""")  # fmt: skip
        assert painted >= 48 * 4, painted  # every point is a square of at least 2 x 2 pixels

        x, y = browser.evaluate(page, f"{canvas}.catalogMap.clientPosition(17)")
        browser.mouse(page, "mouseMoved", x, y)
        browser.wait_for(page, "!document.getElementById('map-tip').hidden", "the hover tip")
        browser.wait_for(
            page, "document.getElementById('map-tip-image').naturalWidth > 0", "its image"
        )
        assert browser.evaluate(
            page, "document.getElementById('map-tip-text').textContent"
        ).startswith("row 17 · 1")
        browser.click(page, x, y)
        browser.wait_for(
            page, "document.getElementById('item-title').textContent === 'Row 17'", "item 17"
        )
        browser.wait_for(
            page, "document.querySelectorAll('#neighbors .card').length === 3", "its neighbours"
        )
        assert browser.evaluate(page, f"{canvas}.catalogMap.marked.length") == 3

        # A query image's neighbours light up; a failed upload leaves nothing of that answer.
        document = browser.send("DOM.getDocument", page)["root"]["nodeId"]
        file_input = browser.send("DOM.querySelector", page, nodeId=document, selector="#file")[
            "nodeId"
        ]
        browser.send(
            "DOM.setFileInputFiles", page, nodeId=file_input, files=[str(tmp_path / "query.png")]
        )
        browser.wait_for(
            page, "document.querySelectorAll('#results .card').length === 10", "the top-10"
        )
        assert browser.evaluate(page, f"{canvas}.catalogMap.marked.length") == 10
        browser.send(
            "DOM.setFileInputFiles", page, nodeId=file_input, files=[str(tmp_path / "broken.png")]
        )
        browser.wait_for(
            page, "!document.getElementById('query-error').hidden", "the upload's error"
        )
        assert (
            browser.evaluate(page, "getComputedStyle(document.getElementById('query')).display")
            == "none"
        )
        assert browser.evaluate(page, "document.querySelectorAll('#results .card').length") == 0

        # The wheel zooms around the pointer (the point under it stays put); a drag pans.
        the_map = f"{canvas}.catalogMap"
        x, y = browser.evaluate(page, f"{the_map}.clientPosition(30)")
        browser.send("Input.dispatchMouseEvent", page, type="mouseWheel", x=x, y=y,
                     deltaX=0, deltaY=-500)  # fmt: skip
        browser.wait_for(page, f"{the_map}.zoom() > 1.5", "the map zoomed in")
        # (events carry whole pixels)
        assert browser.evaluate(page, f"{the_map}.clientPosition(30)") == pytest.approx(
            [x, y], abs=1
        )
        x, y = browser.evaluate(page, f"{the_map}.clientPosition(30)")
        drag = {"button": "left", "buttons": 1}
        browser.send("Input.dispatchMouseEvent", page, type="mousePressed", x=x, y=y, **drag)
        browser.send(
            "Input.dispatchMouseEvent", page, type="mouseMoved", x=x + 40, y=y + 30, **drag
        )
        browser.send(
            "Input.dispatchMouseEvent", page, type="mouseReleased", x=x + 40, y=y + 30, **drag
        )
        moved = browser.evaluate(page, f"{the_map}.clientPosition(30)")
        assert moved == pytest.approx([x + 40, y + 30], abs=1)
        title = browser.evaluate(page, "document.getElementById('item-title').textContent")
        assert title == "Row 17"  # a drag opens nothing

        accept = "document.querySelector('#suspects li[data-row-id=\"5\"] button')"
        browser.wait_for(page, f"{accept} && !{accept}.disabled", "the suspect's accept button")
        assert browser.evaluate(page, f"{accept}.textContent") == "accept 2"
        browser.evaluate(page, f"{accept}.click()")
        decided = "document.querySelector('#suspects li[data-row-id=\"5\"] .decided')"
        browser.wait_for(
            page, f"{decided} && {decided}.textContent === 'relabel to 2'", "the decision"
        )
        assert corrections.read_text() == HEADER + "5,1,relabel,2\n"

        loaded = browser.evaluate(page, "performance.getEntriesByType('resource').map(e => e.name)")
        assert all(url.startswith((live.url, "blob:")) for url in loaded), loaded
        errors = browser.evaluate(page, "document.getElementById('status').textContent")
        assert errors.startswith("48 catalog items"), errors
    finally:
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs it)")
def test_without_review_the_page_shows_it_read_only(project, map_file, tmp_path):
    live = wait_until_up(
        start(project, "--map", str(map_file), "--corrections", str(tmp_path / "c.csv"))
    )
    browser = Chromium(tmp_path / "profile")
    try:
        page = browser.open(live.url + "/")
        browser.wait_for(
            page, "document.querySelectorAll('#suspects button').length > 0", "the review"
        )
        assert browser.evaluate(
            page, "[...document.querySelectorAll('#review li button')].every(b => b.disabled)"
        )
        mode = browser.evaluate(page, "document.getElementById('review-mode').textContent")
        assert "started without --review" in mode, mode
    finally:
        browser.close()
        assert "Traceback" not in stop(live)
    assert not (tmp_path / "c.csv").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs it)")
def test_the_map_benchmark_smoke_run_prints_its_table(tmp_path):
    """benchmarks/page_map.py on 500 points, so that it cannot rot."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "benchmarks/page_map.py"), "--points", "500"]
    run = subprocess.run(
        [*command, "--rounds", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "## The page's map: 500 of 500 points drawn" in run.stdout, run.stdout
    rows = {line.split("|")[1].strip(): line for line in run.stdout.splitlines() if "|" in line}
    for metric in ("one draw of every point, ms (median)", "one hit test, µs (median)"):
        ratio = float(rows[metric].split("|")[4])
        assert 0 <= ratio < float("inf"), rows[metric]  # 0: faster than the page's clock ticks
