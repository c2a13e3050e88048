"""What a later `dvc repro` does after the tiny pipeline was killed mid-stage: the same bytes
as one uninterrupted run. (A grown catalog's rerun is tested through its benchmark's smoke
run, in test_benchmarks.py.)"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import processes_in
from tiny_project import (
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
