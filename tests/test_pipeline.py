"""The whole pipeline, tiny, through real `dvc repro` in a temporary copy of the project
(kills and a grown catalog: test_pipeline_reruns.py)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from tiny_project import (
    ROOT,
    TINY,
    copy_of_the_tiny_project,
    copy_project,
    declared_outputs,
    digest,
    dvc,
    dvc_env,
    ran_stages,
)

from imgrec.data.prepared import load_prepared
from imgrec.pipeline import kernels

pytestmark = pytest.mark.slow


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
        from imgrec.data.raw_parquet import is_training_data_marker

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


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project with tiny params, reproduced once; a test that changes it works in
    a copy of its own."""
    return copy_of_the_tiny_project(tmp_path_factory, "project")


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
    assert ran_stages(output) == ["fetch_catalog"]


@pytest.mark.parametrize(
    ("param", "value", "changed"),
    [
        ("top_k", 3, {"recommend"}),
        ("batch_size", 8, {"train"}),
        ("img_size", 16, {"prepare", "prepare_catalog"}),
    ],
)
def test_a_param_change_changes_only_the_stages_that_read_it(project, param, value, changed):
    """DVC reruns a stage whose params changed, and then what reads its outputs (the reviewed
    correction and the grown catalog below see that chain run)."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    try:
        params_file.write_text(yaml.safe_dump(yaml.safe_load(original) | {param: value}))
        status = json.loads(dvc("status", "--json", cwd=project).stdout)
    finally:
        params_file.write_text(original)
    # fetch_catalog always runs: it looks for rows appended to the catalog's source.
    assert set(status) == changed | {"fetch_catalog"}
    for stage in changed:
        assert status[stage] == [{"changed deps": {"params.yaml": {param: "modified"}}}], stage


def test_forced_rerun_rewrites_identical_bytes(project):
    """Even where the environment asks the math libraries for other threads than the
    num_threads param (1 in the tiny project): the param decides (catalog_map and recommend
    followed the environment, and wrote other bytes)."""
    outputs = declared_outputs(yaml.safe_load((project / "dvc.yaml").read_text()))
    before = digest(project, outputs)
    lock_before = (project / "dvc.lock").read_text()
    dvc("repro", "--force", cwd=project, env=dict.fromkeys(kernels.THREAD_VARIABLES, "2"))
    assert digest(project, outputs) == before
    assert (project / "dvc.lock").read_text() == lock_before


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
    copy = copy_project(project, tmp_path / "project")
    (copy / "repro.log").unlink()
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


def test_a_reviewed_correction_is_applied_by_prepare_and_retrains(project, tmp_path):
    """The review loop's bar: suggestions accepted on the command line land in the
    corrections file; the next `dvc repro` applies them in prepare (counted), retrains, and
    the catalog and its map follow; a correction of a row that is not there is a skip."""
    report = json.loads((project / "reports/audit.json").read_text())
    if not report["suspect_labels"]:
        pytest.skip("the tiny run's audit suggested no label to review")
    copy = copy_project(project, tmp_path / "project")
    review = [sys.executable, "-m", "imgrec", "review"]
    subprocess.run([*review, "accept-all"], cwd=copy, env=dvc_env(copy), check=True)
    with (copy / "labels/corrections.csv").open("a") as handle:  # by hand: a row not there
        handle.write("99999,3,drop,\n")
    output = dvc("repro", cwd=copy).stdout
    ran = set(ran_stages(output))
    assert {"prepare", "train", "evaluate", "embed", "audit", "catalog_map"} <= ran
    applied = json.loads((copy / "reports/prepare.json").read_text())["corrections"]
    assert (applied["applied"], applied["skipped"]) == (len(report["suspect_labels"]), 1)
    assert "correction drop of row 99999 skipped: no such row" in output
    labels = {s["row_id"]: s["suggested"] for s in report["suspect_labels"]}
    prepared = load_prepared(copy / "data/prepared")
    for row, label in labels.items():
        position = int(np.searchsorted(prepared.row_ids, row))
        assert prepared.class_names[prepared.labels[position]] == label, row


def test_an_audit_gate_fails_the_stage_with_one_line(project, tmp_path):
    found = json.loads((project / "reports/audit_counts.json").read_text())["suspect_labels"]
    if not found:
        pytest.skip("the tiny run's audit found no suspect label to gate on")
    copy = copy_project(project, tmp_path / "project")
    params_file = copy / "params.yaml"
    params_file.write_text(
        params_file.read_text().replace("max_suspect_fraction: -1", "max_suspect_fraction: 0")
    )
    dvc_bin = str(Path(sys.executable).with_name("dvc"))
    run = subprocess.run([dvc_bin, "repro", "audit"], cwd=copy, capture_output=True, text=True,
                         env=dvc_env(copy))  # fmt: skip
    assert run.returncode != 0
    assert f"error: audit gate: {found} suspect labels in" in run.stderr
    assert "more than max_suspect_fraction=0.0" in run.stderr
