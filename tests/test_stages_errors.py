"""Stage scripts stop on bad input with one `error:` line, exit status 1 and no output."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_parquet, tagged_images

ROOT = Path(__file__).resolve().parents[1]


def _run_stage(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"stages/{script}.py", *args],
        cwd=ROOT,
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


def _fetch_args(tmp_path, source, rows):
    out = tmp_path / "out"
    return ["--source", source, "--rows", rows, "--out", f"{out}/raw.parquet",
            "--metrics", f"{out}/fetch.json"]  # fmt: skip


def _prepare_args(tmp_path, data, img_size="8", val_fraction="0.25"):
    out = tmp_path / "out"
    return ["--data", str(data), "--img-size", img_size, "--val-fraction", val_fraction,
            "--seed", "0", "--max-bad-fraction", "0.1", "--out", f"{out}/prepared",
            "--metrics", f"{out}/prepare.json"]  # fmt: skip


def _recommend_args(tmp_path, hnsw_m="32"):
    out = tmp_path / "out"
    return ["--embeddings", f"{tmp_path}/embeddings", "--prepared", f"{tmp_path}/prepared",
            "--top-k", "5", "--index", "faiss", "--hnsw-m", hnsw_m,
            "--hnsw-ef-construction", "200", "--hnsw-ef-search", "128",
            "--out", f"{out}/recommendations.parquet",
            "--metrics", f"{out}/recommend.json"]  # fmt: skip


# (script, args, what the error line must say): checked before any work, so the error is
# all that reaches stderr.
CASES = {
    "fetch-rows-0": ("fetch", lambda tmp, raw: _fetch_args(tmp, str(raw), "0"), "param rows"),
    "fetch-rows-abc": ("fetch", lambda tmp, raw: _fetch_args(tmp, str(raw), "abc"), "param rows"),
    "fetch-unknown-scheme": (
        "fetch",
        lambda tmp, raw: _fetch_args(tmp, "foo://x", "10"),
        "unknown scheme 'foo'",
    ),
    "fetch-missing-path": (
        "fetch",
        lambda tmp, raw: _fetch_args(tmp, str(tmp / "missing.parquet"), "10"),
        "matches no parquet file",
    ),
    "fetch-missing-argument": ("fetch", lambda tmp, raw: ["--rows", "10"], "required"),
    "prepare-img-size-0": (
        "prepare",
        lambda tmp, raw: _prepare_args(tmp, raw, img_size="0"),
        "param img_size",
    ),
    "prepare-val-fraction-1.5": (
        "prepare",
        lambda tmp, raw: _prepare_args(tmp, raw, val_fraction="1.5"),
        "param val_fraction",
    ),
    "recommend-hnsw-m-0": (
        "recommend",
        lambda tmp, raw: _recommend_args(tmp, hnsw_m="0"),
        "param hnsw_m",
    ),
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


@pytest.mark.parametrize(("script", "make_args", "expected"), CASES.values(), ids=CASES.keys())
def test_stage_error_is_one_line_and_leaves_nothing(
    tmp_path, raw_parquet, script, make_args, expected
):
    before = _files(tmp_path)
    result = _run_stage(script, *make_args(tmp_path, raw_parquet))
    lines = _assert_failed_cleanly(result, expected, tmp_path, before)
    assert len(lines) == 1, result.stderr


def test_fetch_empty_source_fails_cleanly(tmp_path, raw_parquet):
    # Found only once reading has begun, so a progress bar may precede the error line.
    empty = make_parquet(tmp_path / "in" / "empty.parquet", [], [])
    before = _files(tmp_path)
    result = _run_stage("fetch", *_fetch_args(tmp_path, str(empty), "5"))
    _assert_failed_cleanly(result, "has no rows", tmp_path, before)


def test_stages_succeed_on_good_input(tmp_path, raw_parquet):
    # The control for the error cases: the same arguments with good values do write outputs.
    fetched = _run_stage("fetch", *_fetch_args(tmp_path, str(raw_parquet), "6"))
    assert fetched.returncode == 0, fetched.stderr
    assert "error:" not in fetched.stderr
    assert (tmp_path / "out" / "raw.parquet").is_file()
    assert (tmp_path / "out" / "fetch.json").is_file()
