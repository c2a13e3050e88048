"""Stage scripts stop on bad input with one `error:` line, exit status 1 and no output."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_parquet, tagged_images

from imgrec.config import STAGE_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = {
    field.name: field.default
    for config in STAGE_CONFIGS.values()
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
    return ["--out", f"{out}/raw.parquet", "--metrics", f"{out}/fetch.json"]


def _prepare_args(tmp_path, data):
    out = tmp_path / "out"
    return ["--data", str(data), "--out", f"{out}/prepared", "--metrics", f"{out}/prepare.json"]


def _recommend_args(tmp_path):
    out = tmp_path / "out"
    return ["--embeddings", f"{tmp_path}/embeddings", "--prepared", f"{tmp_path}/prepared",
            "--out", f"{out}/recommendations.parquet",
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
