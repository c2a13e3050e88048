"""The whole pipeline, tiny, through real `dvc repro` in a temporary copy of the project."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import processes_in
from PIL import Image

from imgrec import kernels
from imgrec.prepared import load_prepared

ROOT = Path(__file__).resolve().parents[1]
TINY = {"rows": 200, "img_size": 32, "epochs": 2, "batch_size": 16}

pytestmark = pytest.mark.slow


def dvc_env(project: Path) -> dict[str, str]:
    """This interpreter's venv first on PATH (stage commands say `python`), the copy's package."""
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(project / "src"),
    }


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    dvc_bin = Path(sys.executable).with_name("dvc")
    result = subprocess.run(
        [str(dvc_bin), *args], cwd=cwd, capture_output=True, text=True, env=dvc_env(cwd)
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def declared_outputs(dvc_yaml: dict) -> list[str]:
    paths = []
    for stage in dvc_yaml["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def check_parses(path: Path) -> None:
    """Open each output with the library that reads its format."""
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        assert files, f"{path} is empty"
        for file in files:
            check_parses(file)
    elif path.suffix == ".json":
        assert json.loads(path.read_text())
    elif path.suffix in (".csv", ".tsv"):
        lines = path.read_text().splitlines()
        assert len(lines) > 1 and all(line.strip() for line in lines), path
    elif path.suffix == ".png":
        with Image.open(path) as image:
            image.load()
            assert image.width > 100 and image.height > 100
    elif path.suffix == ".parquet":
        from imgrec.raw_parquet import is_training_data_marker

        assert pq.read_table(path).num_rows > 0 or is_training_data_marker(path)
    elif path.suffix == ".npy":
        assert np.load(path).size > 0
    elif path.suffix == ".pt":
        assert "state_dict" in torch.load(path, weights_only=True)
    elif path.name.endswith("fingerprint.txt"):
        from imgrec import fingerprint

        recorded = fingerprint.load(path)
        assert recorded.setup["device"] == "cpu" and len(recorded.operations) > 30
    else:
        raise AssertionError(f"no check for output {path}")


def digest(folder: Path, paths: list[str]) -> dict[str, str]:
    hashes = {}
    for name in paths:
        target = folder / name
        for file in sorted([target] if target.is_file() else target.rglob("*")):
            if file.is_file():
                hashes[str(file.relative_to(folder))] = hashlib.md5(file.read_bytes()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project with tiny params, reproduced once."""
    folder = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(
        ROOT / "stages", folder / "stages", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "labels", folder / "labels")  # the (empty) corrections file
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | TINY
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("init", "--no-scm", "-q", cwd=folder)
    shutil.copytree(ROOT / ".dvc" / "plots", folder / ".dvc" / "plots")  # templates
    dvc("config", "plots.html_template", "plots/offline.html", cwd=folder)
    (folder / "repro.log").write_text(dvc("repro", cwd=folder).stdout)
    return folder


def test_every_stage_runs_portable_kernels_and_says_where(project):
    log = (project / "repro.log").read_text()
    stages = re.split(r"Running stage '(\w+)'", log)[1:]
    assert stages[::2] == list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    for name, output in zip(stages[::2], stages[1::2], strict=True):
        machine = next(line for line in output.splitlines() if line.startswith("machine: "))
        assert "kernels portable" in machine, name
        if kernels.applies_here() and name in ("train", "evaluate", "embed"):
            assert "AVX2" in machine.split("torch", 1)[1], machine


def test_every_declared_output_exists_and_parses(project):
    outputs = declared_outputs(yaml.safe_load((project / "dvc.yaml").read_text()))
    assert len(outputs) >= 14
    for name in outputs:
        assert (project / name).exists(), f"{name} was not produced"
        check_parses(project / name)


def test_metrics_hold_the_headline_numbers_and_reports_the_detail(project):
    def read(name: str) -> dict:
        return json.loads((project / name).read_text())

    assert read("reports/fetch.json") == {"rows_fetched": TINY["rows"], "files_read": 1}
    prepared = read("reports/prepare.json")
    assert (prepared["images"], prepared["rows_skipped"]) == (TINY["rows"], 0)
    assert prepared["corrections"]["applied"] == prepared["corrections"]["skipped"] == 0
    assert set(read("reports/audit_counts.json")) == {
        "exact_duplicates",
        "near_duplicates",
        "split_leaks",
        "suspect_labels",
        "outliers",
    }
    train = read("metrics/train.json")
    assert set(train) == {"best_epoch"} and 1 <= train["best_epoch"] <= TINY["epochs"]
    evaluate = read("metrics/evaluate.json")
    assert set(evaluate) == {"val_accuracy", "macro_f1"}
    assert 0.0 <= evaluate["val_accuracy"] <= 1.0
    assert set(read("metrics/recommend.json")) == {"precision@k", "map@k"}
    report = read("reports/prepare.json")
    assert report["skipped_by_reason"] == {"null_image": 0, "undecodable": 0, "too_large": 0,
                                           "unlabeled": 0}  # fmt: skip
    per_class = (project / "plots/per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1,support" and len(per_class) == 11
    rows = (project / "dvclive/plots/metrics/val/loss.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "loss"] and len(rows) == 1 + TINY["epochs"]


def test_dvc_metrics_show_has_the_headline_numbers_and_echoes_no_param(project):
    shown = dvc("metrics", "show", cwd=project).stdout
    header = shown.splitlines()[0].split()
    assert {"best_epoch", "macro_f1", "map@k", "precision@k", "val_accuracy"} <= set(header)
    # A 120-column terminal shows it whole (issue 31): the headline; counts are reports.
    assert max(len(line) for line in shown.splitlines()) <= 120
    counts = dvc("metrics", "show", "reports/audit_counts.json", cwd=project).stdout
    assert "suspect_labels" in counts  # a report's counts still show and diff on request
    params = set(yaml.safe_load((project / "params.yaml").read_text()))
    assert not set(header) & params, set(header) & params


def test_nothing_changed_means_nothing_to_do_but_the_catalog_check(project):
    # fetch_catalog always runs, to see rows appended to its source (dvc.yaml).
    assert dvc("status", cwd=project).stdout.split() == ["fetch_catalog:", "always", "changed"]
    output = dvc("repro", cwd=project).stdout
    assert re.findall(r"Running stage '(\w+)'", output) == ["fetch_catalog"]


def write_catalog(path: Path, rows: range, unlabeled: set[int]) -> None:
    """Rows of the built-in digits as a catalog file, the `unlabeled` ones without a label."""
    from imgrec.fetch import digits_table

    table = digits_table().slice(rows.start, len(rows))
    labels = table.column("label").to_pylist()
    labels = [None if row in unlabeled else label for row, label in zip(rows, labels, strict=True)]
    pq.write_table(table.set_column(1, "label", pa.array(labels, pa.int64())), path)


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def test_a_grown_catalog_is_embedded_without_training_to_the_bytes_of_a_full_pass(
    project, tmp_path
):
    """Issue 22's bar, tiny: the catalog becomes a source of its own, the training data's
    200 rows and 40 more (two of them unlabeled); the catalog's stages rerun and not train,
    only the 40 new rows are embedded (the 200 were, as the catalog before), and the
    embeddings and recommendations are those a from-scratch pass gives."""
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    write_catalog(catalog / "0000.parquet", range(TINY["rows"]), unlabeled=set())
    write_catalog(catalog / "0001.parquet", range(200, 240), unlabeled={203, 210})
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["catalog_source"] = str(catalog)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    grown = dvc("repro", cwd=copy).stdout
    assert ran_stages(grown) == [
        "fetch_catalog", "prepare_catalog", "embed", "audit", "catalog_map", "recommend", "figure"
    ]  # fmt: skip
    assert "embedded 40 of 240 images; reused the vectors of 200 from" in grown
    assert json.loads((copy / "reports/prepare_catalog.json").read_text())["unlabeled_images"] == 2
    compared = ["data/embeddings", "data/recommendations.parquet"]
    after_growth = digest(copy, compared)
    unchanged = dvc("repro", cwd=copy).stdout
    assert ran_stages(unchanged) == ["fetch_catalog"] and "up to date with its source" in unchanged
    # The query command answers from the grown catalog: an appended image is found in it.
    from imgrec.fetch import digits_table

    (copy / "new.png").write_bytes(digits_table().column("image")[239].as_py()["bytes"])
    query = subprocess.run(
        [sys.executable, "-m", "imgrec", "recommend", "new.png", "--json"],
        cwd=copy, capture_output=True, text=True, env=dvc_env(copy), check=True,
    )  # fmt: skip
    assert 239 in json.loads(query.stdout)[0]["duplicate_of"]  # catalog row 239 of 240

    shutil.rmtree(copy / ".imgrec" / "vectors")
    scratch = dvc("repro", "--force", "--single-item", "embed", cwd=copy).stdout
    assert "embedded 240 of 240 images; none were in" in scratch
    dvc("repro", "--force", "--single-item", "recommend", cwd=copy)
    assert digest(copy, compared) == after_growth


@pytest.mark.parametrize(
    ("param", "value", "expected_runs"),
    [
        # fetch_catalog always runs: it looks for rows appended to the catalog's source.
        ("top_k", 3, {"fetch_catalog", "recommend", "figure"}),
        (
            "batch_size",
            8,
            {
                "fetch_catalog",
                "train",
                "evaluate",
                "embed",
                "audit",
                "catalog_map",
                "recommend",
                "figure",
            },
        ),
    ],
)
def test_a_param_change_reruns_only_what_depends_on_it(project, param, value, expected_runs):
    params_file = project / "params.yaml"
    original = params_file.read_text()
    try:
        params_file.write_text(yaml.safe_dump(yaml.safe_load(original) | {param: value}))
        output = dvc("repro", cwd=project).stdout
        ran = set(re.findall(r"Running stage '(\w+)'", output))
        assert ran == expected_runs
    finally:
        params_file.write_text(original)
        dvc("repro", cwd=project)  # back to the fixture's state (from DVC's run cache)


def test_forced_rerun_rewrites_identical_bytes(project):
    outputs = declared_outputs(yaml.safe_load((project / "dvc.yaml").read_text()))
    before = digest(project, outputs)
    lock_before = (project / "dvc.lock").read_text()
    dvc("repro", "--force", cwd=project)
    assert digest(project, outputs) == before
    assert (project / "dvc.lock").read_text() == lock_before


@pytest.mark.parametrize(
    ("stage", "marker", "at_most_s", "rerun_says", "whole_group"),
    [
        # fetch of 200 digits takes about a second, most of it Python's start: kill early.
        ("fetch", "data/.raw.parquet.tmp", 0.3, None, True),
        ("prepare", "data/.prepared.tmp/staging.npy", 1.5, None, True),
        ("train", "dvclive/plots/metrics/train/loss.tsv", 1.5, None, True),
        # Killed once epoch 1's state is saved: the rerun trains epoch 2 alone.
        ("train", ".imgrec/train-state.pt", 60, "train: resuming at epoch 2 of 2 from ", True),
        # dvc alone killed (say by the OOM killer): its stage must end too, not race the rerun.
        ("train", ".imgrec/train-state.pt", 60, None, False),
    ],
)
def test_a_killed_stage_leaves_nothing_a_later_stage_accepts(
    project, tmp_path, stage, marker, at_most_s, rerun_says, whole_group
):
    """SIGKILL `dvc repro` (its process group, or dvc alone) while `stage` writes; the next
    `dvc repro` gives the same results (and resumes training where it was saved)."""
    copy = tmp_path / "project"
    shutil.copytree(
        project,
        copy,
        ignore=shutil.ignore_patterns("data", "models", "dvclive", "metrics", "plots", "dvc.lock"),
    )
    shutil.rmtree(copy / ".dvc" / "cache", ignore_errors=True)  # no run cache: really rerun
    dvc_bin = Path(sys.executable).with_name("dvc")
    log = (copy / "repro.log").open("w")
    process = subprocess.Popen(
        [str(dvc_bin), "repro"],
        cwd=copy,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # DVC runs a stage in $SHELL, which bash replaces with the stage (exec): the stage's
        # parent is then dvc itself.
        env=dvc_env(copy) | {"SHELL": shutil.which("bash") or "/bin/sh"},
    )
    started = None
    while process.poll() is None:
        running = f"Running stage '{stage}'" in (copy / "repro.log").read_text()
        started = started or (time.monotonic() if running else None)
        # Mid-write if we catch the partial file; else at least mid-stage.
        if (copy / marker).exists() or (started and time.monotonic() - started > at_most_s):
            if whole_group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    deadline = time.monotonic() + 60
    while processes_in(copy):
        assert time.monotonic() < deadline, f"{stage} outlived the dvc that ran it"
        time.sleep(0.05)
    log.close()
    assert process.returncode == -signal.SIGKILL, f"dvc repro ended before {stage} was killed"

    assert stage in json.loads(dvc("status", "--json", cwd=copy).stdout)
    rerun = dvc("repro", cwd=copy).stdout
    if rerun_says is not None:
        assert rerun_says in rerun and "epoch 1/2" not in rerun
    assert not (copy / ".imgrec" / "train-state.pt").exists()  # removed after success
    outputs = declared_outputs(yaml.safe_load((project / "dvc.yaml").read_text()))
    assert digest(copy, outputs) == digest(project, outputs)


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout


def _reproduction_check(folder: Path, tolerances: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgrec.reproduction", "--tolerances", str(tolerances)],
        cwd=folder,
        capture_output=True,
        text=True,
        env=dvc_env(folder),
    )


def test_the_check_tells_float_noise_from_a_regression(project, tmp_path):
    """Other kernels: within tolerance, and said so; a committed metric moved too far: fails."""
    copy = tmp_path / "project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("repro.log"))
    (copy / ".gitignore").write_text("/data/\n/models/\n/.dvc/cache/\n/.dvc/tmp/\n")
    _git("init", "-q", cwd=copy)
    _git("add", "-A", cwd=copy)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "committed run", cwd=copy)
    # The tiny run's metrics move more than the real run's: tolerances to match its size.
    tolerances = yaml.safe_load((ROOT / "reproducibility.yaml").read_text())
    for rules in tolerances["metrics"].values():
        for pattern, tolerance in rules.items():
            if isinstance(tolerance, float):
                rules[pattern] = 0.5
    loose = tmp_path / "tolerances.yaml"
    loose.write_text(yaml.safe_dump(tolerances))
    model_before = (copy / "models/model.pt").read_bytes()

    # Portable kernels on x86-64: one changed byte anywhere fails, whatever the metrics say.
    if kernels.applies_here():
        figure = copy / "plots/predictions.png"
        figure.write_bytes(figure.read_bytes() + b"\0")
        check = _reproduction_check(copy, loose)
        assert check.returncode == 1
        assert (
            "FAILED: not bit-identical" in check.stdout and "plots/predictions.png" in check.stdout
        )
        _git("checkout", "plots/predictions.png", cwd=copy)

    params = yaml.safe_load((copy / "params.yaml").read_text()) | {"kernels": "native"}
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # Native mode leaves these to the environment: no SIMD in ATen, SSE4.1 in oneDNN.
    other_kernels = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    dvc_bin = Path(sys.executable).with_name("dvc")
    done = subprocess.run(
        [str(dvc_bin), "repro"], cwd=copy, capture_output=True, text=True,
        env=dvc_env(copy) | other_kernels,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    native = [line for line in done.stdout.splitlines() if "kernels native: torch" in line]
    # train, evaluate, embed, audit, catalog_map, recommend
    assert len(native) == 6 and all("DEFAULT" in line for line in native), done.stdout
    assert (copy / "models/model.pt").read_bytes() != model_before, "the kernels did not change"

    check = _reproduction_check(copy, loose)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "within tolerance" in check.stdout
    assert "| metric | committed | reproduced | difference | tolerance | verdict |" in check.stdout

    evaluate = json.loads((copy / "metrics/evaluate.json").read_text())
    committed = evaluate | {"val_accuracy": evaluate["val_accuracy"] - 0.6}  # beyond 0.5
    (copy / "metrics/evaluate.json").write_text(json.dumps(committed))
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "edited", cwd=copy)
    (copy / "metrics/evaluate.json").write_text(json.dumps(evaluate))
    check = _reproduction_check(copy, loose)
    assert check.returncode == 1
    failing = [line for line in check.stdout.splitlines() if "FAIL" in line and line[0] == "|"]
    assert len(failing) == 1 and "metrics/evaluate.json:val_accuracy" in failing[0]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs it)")
def test_dvc_plots_show_draws_the_loss_curve_with_no_network(project, tmp_path):
    out = tmp_path / "plots"
    dvc("plots", "show", "-o", str(out), cwd=project)
    html = (out / "index.html").read_text()
    assert "<script src=" not in html  # nothing to fetch: vega is inlined
    screenshot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--proxy-server=127.0.0.1:9",  # any request for the network fails
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,2600",
         "--virtual-time-budget=10000", f"--screenshot={screenshot}",
         (out / "index.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - rgb).sum(axis=2) < 40).sum())

    assert count((0x94, 0x5D, 0xD6)) > 500, "no curve was drawn"  # DVC's colour for workspace
    assert count((0x2C, 0xA0, 0x2C)) > 50, "the loss chart does not mark the best epoch"


def test_a_reviewed_correction_is_applied_by_prepare_and_retrains(project):
    """The review loop's bar: suggestions accepted on the command line land in the
    corrections file; the next `dvc repro` applies them in prepare (counted), retrains, and
    the catalog and its map follow; a correction of a row that is not there is a skip."""
    corrections = project / "labels/corrections.csv"
    original = corrections.read_text()
    report = json.loads((project / "reports/audit.json").read_text())
    if not report["suspect_labels"]:
        pytest.skip("the tiny run's audit suggested no label to review")
    env = dvc_env(project)
    review = [sys.executable, "-m", "imgrec", "review"]
    subprocess.run([*review, "accept-all"], cwd=project, env=env, check=True)
    with corrections.open("a") as handle:  # by hand: a row the data does not have
        handle.write("99999,3,drop,\n")
    try:
        output = dvc("repro", cwd=project).stdout
        ran = set(re.findall(r"Running stage '(\w+)'", output))
        assert {"prepare", "train", "evaluate", "embed", "audit", "catalog_map"} <= ran
        applied = json.loads((project / "reports/prepare.json").read_text())["corrections"]
        suggested = len(report["suspect_labels"])
        assert (applied["applied"], applied["skipped"]) == (suggested, 1)
        assert "correction drop of row 99999 skipped: no such row" in output
        labels = {s["row_id"]: s["suggested"] for s in report["suspect_labels"]}
        prepared = load_prepared(project / "data/prepared")
        for row, label in labels.items():
            position = int(np.searchsorted(prepared.row_ids, row))
            assert prepared.class_names[prepared.labels[position]] == label, row
    finally:
        corrections.write_text(original)
        dvc("repro", cwd=project)  # back to the fixture's state (from DVC's run cache)


def test_an_audit_gate_fails_the_stage_with_one_line(project):
    found = json.loads((project / "reports/audit_counts.json").read_text())["suspect_labels"]
    if not found:
        pytest.skip("the tiny run's audit found no suspect label to gate on")
    params_file = project / "params.yaml"
    original = params_file.read_text()
    try:
        params_file.write_text(
            original.replace("max_suspect_fraction: -1", "max_suspect_fraction: 0")
        )
        dvc_bin = str(Path(sys.executable).with_name("dvc"))
        run = subprocess.run([dvc_bin, "repro", "audit"], cwd=project, capture_output=True,
                             text=True, env=dvc_env(project))  # fmt: skip
        assert run.returncode != 0
        assert f"error: audit gate: {found} suspect labels in" in run.stderr
        assert "more than max_suspect_fraction=0.0" in run.stderr
    finally:
        params_file.write_text(original)
        dvc("repro", cwd=project)
