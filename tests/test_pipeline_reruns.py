"""What a later `dvc repro` does after the tiny pipeline was killed mid-stage, or after its
catalog grew: the same bytes as one uninterrupted, full run. A file of its own, with its own
copy of the reproduced tiny project, so that pytest's two workers share the pipeline tests'
load."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import processes_in
from tiny_project import (
    TINY,
    copy_of_the_tiny_project,
    copy_project,
    declared_outputs,
    digest,
    dvc,
    dvc_env,
    ran_stages,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_of_the_tiny_project(tmp_path_factory, "project")


def write_catalog(path: Path, rows: range, unlabeled: set[int]) -> None:
    """Rows of the built-in digits as a catalog file, the `unlabeled` ones without a label."""
    from imgrec.data.fetch import digits_table

    table = digits_table().slice(rows.start, len(rows))
    labels = table.column("label").to_pylist()
    labels = [None if row in unlabeled else label for row, label in zip(rows, labels, strict=True)]
    pq.write_table(table.set_column(1, "label", pa.array(labels, pa.int64())), path)


def test_a_grown_catalog_is_embedded_without_training_to_the_bytes_of_a_full_pass(
    project, tmp_path
):
    """Issue 22's bar, tiny: the catalog becomes a source of its own, the training data's
    200 rows and 40 more (two of them unlabeled); the catalog's stages rerun and not train,
    only the 40 new rows are embedded (the 200 were, as the catalog before), and the
    embeddings and recommendations are those a from-scratch pass gives."""
    copy = copy_project(project, tmp_path / "project")
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
    from imgrec.data.fetch import digits_table

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
    """SIGKILL `dvc repro` (its process group, or dvc alone) while `stage` writes, the stages
    before it done (as after an edit to its code); the next `dvc repro` gives the same results
    (and resumes training where it was saved)."""
    copy = copy_project(project, tmp_path / "project", run_cache=False)  # so it really runs
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    for name in declared_outputs(pipeline, stage):
        if (copy / name).is_dir():
            shutil.rmtree(copy / name)
        else:
            (copy / name).unlink(missing_ok=True)
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
    # Later stages' inputs came back the same; fetch_catalog always runs (dvc.yaml says why).
    assert set(ran_stages(rerun)) == {stage, "fetch_catalog"}
    outputs = declared_outputs(pipeline)
    assert digest(copy, outputs) == digest(project, outputs)
