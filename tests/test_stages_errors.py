"""Stage scripts stop on bad input with one `error:` line, exit status 1 and no output."""

import contextlib
import dataclasses
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_parquet, stage_configs, tagged_images
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = {
    field.name: field.default
    for config in stage_configs().values()
    for field in dataclasses.fields(config)
}


def _run_stage(script: str, tmp_path: Path, params: dict, *args: str):
    """Run a stage script as DVC does: in the project folder, beside its params.yaml."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(DEFAULT_PARAMS | params))
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{script}.py"), *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _files(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*")}


@pytest.fixture
def raw_parquet(tmp_path):
    return make_parquet(tmp_path / "in" / "raw.parquet", tagged_images(8), [0, 1] * 4)


def _fetch_args(tmp_path):
    out = tmp_path / "out"
    return ["--out", f"{out}/raw.parquet", "--report", f"{out}/fetch.json"]


def _prepare_args(tmp_path, data):
    out = tmp_path / "out"
    return ["--data", str(data), "--corrections", f"{out}/corrections.csv", "--out",
            f"{out}/prepared", "--hashes", f"{out}/hashes.parquet",
            "--report", f"{out}/report.json"]  # fmt: skip


def _recommend_args(tmp_path):
    out = tmp_path / "out"
    return ["--embeddings", f"{tmp_path}/embeddings", "--prepared", f"{tmp_path}/prepared",
            "--audit", f"{tmp_path}/audit.json", "--out", f"{out}/recommendations.parquet",
            "--metrics", f"{out}/recommend.json"]  # fmt: skip


# (script, params, args, what the error line must say): checked before any work, so the
# error is all that reaches stderr.
CASES = {
    "fetch-rows-0": ("fetch", {"rows": 0}, _fetch_args, "param rows"),
    "fetch-rows-abc": ("fetch", {"rows": "abc"}, _fetch_args, "param rows"),
    "fetch-unknown-scheme": ("fetch", {"source": "foo://x"}, _fetch_args, "unknown scheme 'foo'"),
    "fetch-missing-path": (
        "fetch",
        {"source": "/nowhere/missing.parquet"},
        _fetch_args,
        "matches no parquet file",
    ),
    "fetch-missing-argument": ("fetch", {}, lambda tmp: ["--out", "x"], "required"),
    "prepare-img-size-0": (
        "prepare",
        {"img_size": 0},
        lambda tmp: _prepare_args(tmp, tmp / "in" / "raw.parquet"),
        "param img_size",
    ),
    "prepare-val-fraction-1.5": (
        "prepare",
        {"val_fraction": 1.5},
        lambda tmp: _prepare_args(tmp, tmp / "in" / "raw.parquet"),
        "param val_fraction",
    ),
    "recommend-hnsw-m-0": ("recommend", {"hnsw_m": 0}, _recommend_args, "param hnsw_m"),
    "recommend-no-param": ("recommend", {"top_k": None}, _recommend_args, "param top_k"),
}


def _assert_failed_cleanly(result, expected, tmp_path, before):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip("\n").split("\n")
    assert lines[-1].startswith("error: ")
    assert expected in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert _files(tmp_path) - before <= {Path("out")}  # at most the (empty) output folder
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return lines


@pytest.mark.parametrize(
    ("script", "params", "make_args", "expected"), CASES.values(), ids=CASES.keys()
)
def test_stage_error_is_one_line_and_leaves_nothing(
    tmp_path, raw_parquet, script, params, make_args, expected
):
    (tmp_path / "project").mkdir()
    before = _files(tmp_path) | {Path("project/params.yaml")}
    result = _run_stage(script, tmp_path, params, *make_args(tmp_path))
    lines = _assert_failed_cleanly(result, expected, tmp_path, before)
    assert len(lines) == 1, result.stderr


def test_fetch_empty_source_fails_cleanly(tmp_path, raw_parquet):
    # Found only once reading has begun, so a progress bar may precede the error line.
    empty = make_parquet(tmp_path / "in" / "empty.parquet", [], [])
    (tmp_path / "project").mkdir()
    before = _files(tmp_path) | {Path("project/params.yaml")}
    result = _run_stage(
        "fetch", tmp_path, {"source": str(empty), "rows": 5}, *_fetch_args(tmp_path)
    )
    _assert_failed_cleanly(result, "has no rows", tmp_path, before)


def test_stages_succeed_on_good_input(tmp_path, raw_parquet):
    # The control for the error cases: the same arguments with good values do write outputs.
    params = {"source": str(raw_parquet), "rows": 6}
    fetched = _run_stage("fetch", tmp_path, params, *_fetch_args(tmp_path))
    assert fetched.returncode == 0, fetched.stderr
    assert "error:" not in fetched.stderr
    assert (tmp_path / "out" / "raw.parquet").is_file()
    assert (tmp_path / "out" / "fetch.json").is_file()


# --- faults: signals and a full disk while prepare runs ---------------------------------


def _children(pid: int) -> set[int]:
    """Every thread's children: Dask's local cluster starts its workers from its own thread."""
    children = set()
    for thread in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children |= {int(p) for p in (thread / "children").read_text().split()}
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def busy_parquet(tmp_path):
    """Enough noisy PNGs that prepare's workers are still decoding when a signal comes."""
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    return make_parquet(tmp_path / "in" / "busy.parquet", blobs * 40, [0, 1] * 1280, 64)


def _start_prepare(tmp_path, data, out):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(DEFAULT_PARAMS | {"img_size": 16}))
    args = ["--data", str(data), "--corrections", str(out / "corrections.csv"),
            "--out", str(out / "prepared"), "--hashes",
            str(out / "hashes.parquet"), "--report", str(out / "report.json")]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / "prepare.py"), *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a terminal's Ctrl-C finds it: a shell starts background jobs, such as a CI
        # script's, with SIGINT ignored, and Python then leaves it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_workers(process, out) -> set[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        workers = _children(process.pid)
        if len(workers) >= 1 and (out / ".prepared.tmp" / "staging.npy").exists():
            time.sleep(0.3)  # let them decode a little
            return _children(process.pid)
        time.sleep(0.02)
    raise AssertionError("prepare never started its workers")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_terminated_prepare_ends_its_workers_and_leaves_nothing(tmp_path, busy_parquet, signum):
    out = tmp_path / "out"
    process = _start_prepare(tmp_path, busy_parquet, out)
    workers = _wait_for_workers(process, out)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        f"error: stopped by {signal.Signals(signum).name}; dvc repro reruns this stage."
        if signum == signal.SIGTERM
        else "error: interrupted; dvc repro reruns this stage."
    ]
    time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived prepare"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_killed_prepare_takes_its_workers_with_it(tmp_path, busy_parquet):
    out = tmp_path / "out"
    process = _start_prepare(tmp_path, busy_parquet, out)
    workers = _wait_for_workers(process, out)
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived a SIGKILLed prepare"
    # What SIGKILL leaves is a dot-named temp folder, never the output a later stage reads.
    assert not (out / "prepared").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)],
                          capture_output=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, busy_parquet, tiny_disk):
    process = _start_prepare(tmp_path, busy_parquet, tiny_disk)  # 2560 x 16 x 16 x 3 bytes > 1 MB
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], stderr
    assert not any(tiny_disk.iterdir()), list(tiny_disk.iterdir())
