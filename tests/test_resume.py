"""Resumable training: a run stopped anywhere and resumed ends with the same bits.

In-process tests stop training with a real SIGTERM the process sends itself at a chosen
training batch; the stage tests kill real subprocesses (SIGKILL, SIGTERM, DDP).
"""

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import processes_in, train_stage_command

from imgrec.data.prepared import Prepared
from imgrec.errors import Stopped
from imgrec.pipeline import runtime
from imgrec.training.model import CNNClassifier, ModelConfig
from imgrec.training.train import TrainConfig, train
from imgrec.training.train_state import Resume, RunIdentity

IMG_SIZE, N_CLASSES = 16, 4
CONFIG = TrainConfig(batch_size=8, epochs=3, augment=True, patience=10)  # 4 batches an epoch
pytestmark = pytest.mark.usefixtures("deterministic_torch")


@pytest.fixture(scope="module")
def data() -> Prepared:
    rng = np.random.default_rng(0)
    return Prepared(
        images=rng.integers(0, 256, (40, IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8),
        labels=np.arange(40, dtype=np.int64) % N_CLASSES,
        row_ids=np.arange(40, dtype=np.int64),
        train_index=np.arange(30),  # 4 batches of 8: the last one short
        val_index=np.arange(30, 40),
        class_names=[str(c) for c in range(N_CLASSES)],
        img_size=IMG_SIZE,
    )


def identity(config: TrainConfig = CONFIG, prepared_md5: str = "data") -> RunIdentity:
    return RunIdentity(prepared_md5, config.identity(1), code_md5="code")


def sigterm() -> None:
    signal.raise_signal(signal.SIGTERM)


def crash() -> None:
    raise RuntimeError("killed")  # what SIGKILL does to the loop, as far as state goes


def fit(data, resume: Resume | None, config=CONFIG, at_batch: int | None = None, do=sigterm):
    """Train as the stage does; return (weights, records given to on_epoch, result).

    `do()` runs while training batch `at_batch` (1-based, counted over all epochs) runs:
    by default it sends this process SIGTERM."""
    generator = runtime.seed_everything(0)
    model = CNNClassifier(ModelConfig(num_classes=N_CLASSES))
    batches = [0]

    def signal_at(module, args):
        if module.training:
            batches[0] += 1
            if batches[0] == at_batch:
                do()

    hook = model.register_forward_pre_hook(signal_at)
    records = []
    try:
        result = train(model, data, config, generator=generator, device=torch.device("cpu"),
                       on_epoch=records.append, resume=resume)  # fmt: skip
    finally:
        hook.remove()
    return model.state_dict(), records, result


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(data):
    return fit(data, resume=None)


@pytest.mark.parametrize(
    ("stop_at", "resumes_at"),
    [(2, "epoch 1 of 3, batch 2 of 4"), (4, "epoch 2 of 3"), (7, "epoch 2 of 3, batch 3 of 4")],
)
def test_sigterm_saves_at_the_next_boundary_and_the_resumed_run_is_identical(
    data, uninterrupted, tmp_path, caplog, stop_at, resumes_at
):
    resume = Resume(tmp_path / "state.pt", identity())
    with pytest.raises(Stopped, match=f"SIGTERM, with the state saved at {resumes_at}$"):
        fit(data, resume, at_batch=stop_at)
    assert resume.path.exists()
    caplog.set_level("INFO")
    weights, records, result = fit(data, resume)
    assert f"train: resuming at {resumes_at} from {resume.path}" in caplog.text
    expected_weights, expected_records, expected = uninterrupted
    assert same_weights(weights, expected_weights)
    assert records == expected_records  # dvclive's curves: replayed, then continued
    assert (result.best_epoch, result.best_val_loss) == (
        expected.best_epoch,
        expected.best_val_loss,
    )


def test_saves_every_n_batches_and_a_mid_epoch_save_resumes_identically(
    data, uninterrupted, tmp_path
):
    config = TrainConfig(**{**vars(CONFIG), "checkpoint_every": 3})
    resume = Resume(tmp_path / "state.pt", identity(config))
    with pytest.raises(RuntimeError, match="killed"):
        fit(data, resume, config, at_batch=8, do=crash)  # the last batch of epoch 2
    # Saves after batches 3 and 6 of the run (4 an epoch): the last was epoch 2, batch 2.
    state = torch.load(resume.path, weights_only=True)["state"]  # data: no trust needed
    assert (state["epoch"], state["batch"]) == (2, 2)
    weights, records, _ = fit(data, resume, config)
    assert same_weights(weights, uninterrupted[0]) and records == uninterrupted[1]


def test_a_second_ctrl_c_stops_at_once_without_saving(data, tmp_path):
    resume = Resume(tmp_path / "state.pt", identity())

    def ctrl_c_twice():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    # Ctrl-C as a terminal's process takes it: pytest started in the background by a
    # non-interactive shell inherits SIGINT ignored, and training rightly leaves that so.
    ignored_or_not = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C, without saving") as stop:
            fit(data, resume, at_batch=2, do=ctrl_c_twice)
    finally:
        signal.signal(signal.SIGINT, ignored_or_not)
    assert not isinstance(stop.value, Stopped) and not resume.path.exists()


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"config": TrainConfig(**{**vars(CONFIG), "lr": 0.01})}, "the train config (lr)"),
        ({"prepared_md5": "other data"}, "the prepared data"),
    ],
)
def test_a_state_of_another_run_is_ignored_with_one_line(
    data, uninterrupted, tmp_path, caplog, changed, reason
):
    path = tmp_path / "state.pt"
    with pytest.raises(Stopped):
        fit(data, Resume(path, identity()), at_batch=6)
    caplog.set_level("INFO")
    config = changed.get("config", CONFIG)
    weights, _, _ = fit(data, Resume(path, identity(config, changed.get("prepared_md5", "data"))),
                        config)  # fmt: skip
    assert f"another run's ({reason} differs); starting fresh" in caplog.text
    if config == CONFIG:  # same config, other data label: a fresh run equals an uninterrupted one
        assert same_weights(weights, uninterrupted[0])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_state_is_one_line_and_a_fresh_start(
    data, uninterrupted, tmp_path, caplog, damage
):
    path = tmp_path / "state.pt"
    with pytest.raises(Stopped):
        fit(data, Resume(path, identity()), at_batch=6)
    content = path.read_bytes()
    path.write_bytes({"truncate": content[: len(content) // 2], "garbage": b"not a state" * 100,
                      "empty": b""}[damage])  # fmt: skip
    caplog.set_level("INFO")
    weights, _, _ = fit(data, Resume(path, identity()))
    assert f"train: ignoring {path}: it cannot be read (" in caplog.text
    assert same_weights(weights, uninterrupted[0])


# ---- the stage, in real subprocesses ------------------------------------------------------

# 36 train images in batches of 8: 5 batches an epoch; patience high enough to run all epochs.
# One thread, as the tiny project's (tiny_project.TINY says why); two for two ranks.
STAGE = {"batch_size": 8, "epochs": 3, "patience": 10, "augment": True, "num_threads": 1}
STATE = ".imgrec/train-state.pt"


def outputs(project: Path) -> dict[str, str]:
    """md5 of every file the stage writes: the model, dvclive's curves and summary, metrics."""
    files = [project / "models" / "model.pt", project / "train.json"]
    files += sorted((project / "dvclive").rglob("*.*"))
    return {str(f.relative_to(project)): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def run_to_end(project: Path, prepared: Path, params: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(
        train_stage_command(project, prepared, params), cwd=project, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (project / STATE).exists()  # removed after success
    return done


def saved_batch(project: Path) -> tuple[int, int] | None:
    """(epoch, batch) of the saved state, or None while there is none."""
    try:
        state = torch.load(project / STATE, weights_only=True)["state"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None
    return state["epoch"], state["batch"]


def start_and_signal(project: Path, prepared: Path, params: dict, sig: signal.Signals, when):
    """Start the stage, send `sig` to its process group once `when(saved_batch)` holds."""
    command = train_stage_command(project, prepared, params)
    log = (project / "first.log").open("w")
    process = subprocess.Popen(
        command, cwd=project, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if when(saved_batch(project)):
            os.killpg(process.pid, sig)
            break
        time.sleep(0.01)
    process.wait(timeout=120)
    log.close()
    # DDP ranks run in sessions of their own: they must end with their launcher.
    deadline = time.monotonic() + 30
    while processes_in(project):
        assert time.monotonic() < deadline, "a rank outlived its launcher"
        time.sleep(0.01)
    return process.returncode, (project / "first.log").read_text()


@pytest.fixture(scope="module")
def reference(tiny_prepared, tmp_path_factory) -> dict[str, str]:
    """An uninterrupted run (no saves between epoch ends): the bytes every resume must give."""
    project = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(project, tiny_prepared, STAGE)
    return outputs(project)


def mid_epoch(position) -> bool:
    return position is not None and position[1] >= 2


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_bytes(
    tiny_prepared, reference, tmp_path
):
    params = STAGE | {"checkpoint_every": 1}
    code, _ = start_and_signal(tmp_path, tiny_prepared, params, signal.SIGKILL, mid_epoch)
    assert code == -signal.SIGKILL, "the run ended before it was killed"
    rerun = run_to_end(tmp_path, tiny_prepared, params)
    # Killed once a mid-epoch state was seen; the run may have saved once more before it died.
    assert re.search(r"train: resuming at epoch \d of 3(, batch \d of 5)? from ", rerun.stdout)
    assert outputs(tmp_path) == reference


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_sigterm_saves_exits_in_one_line_and_the_rerun_resumes(tiny_prepared, reference, tmp_path):
    params = STAGE | {"checkpoint_every": 1}  # the first save, and so the signal, come early
    code, log = start_and_signal(
        tmp_path, tiny_prepared, params, signal.SIGTERM, lambda position: position is not None
    )
    assert code == 130, log
    (line,) = [line for line in log.splitlines() if "stopped by SIGTERM" in line]
    assert re.fullmatch(
        r"train: stopped by SIGTERM, with the state saved at epoch \d of 3(, batch \d of 5)?; "
        r"rerun the same command \(`dvc repro`\) to resume\.",
        line,
    )
    assert "Traceback" not in log
    rerun = run_to_end(tmp_path, tiny_prepared, params)
    assert "train: resuming at epoch" in rerun.stdout
    assert outputs(tmp_path) == reference


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_two_ranks_resume_bit_for_bit_after_sigkill(tiny_prepared, tmp_path):
    params = STAGE | {"nproc": 2, "num_threads": 2, "checkpoint_every": 1}
    run_to_end(tmp_path / "uninterrupted", tiny_prepared, params)
    expected = outputs(tmp_path / "uninterrupted")
    project = tmp_path / "killed"
    code, log = start_and_signal(project, tiny_prepared, params, signal.SIGKILL, mid_epoch)
    assert code == -signal.SIGKILL, log
    state = torch.load(project / STATE, weights_only=True)["state"]
    assert len(state["ranks"]) == 2  # each rank's generators, written by rank 0
    rerun = run_to_end(project, tiny_prepared, params)
    assert rerun.stdout.count("train: resuming at epoch") == 1  # rank 0 says it
    assert outputs(project) == expected
