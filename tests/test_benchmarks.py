"""benchmarks/run.py in smoke mode: every stage runs and prints its table, so it cannot rot."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each stage's table: its two sides and the rows that must hold a positive, finite ratio.
EXPECTED = {
    "fetch": ("imgrec", "seed", ["images/s", "peak RSS MB"]),
    "prepare": ("imgrec", "seed", ["images/s", "peak RSS MB"]),
    "train": ("imgrec", "seed", ["images/s", "peak RSS MB"]),
    "embed": ("imgrec", "seed", ["images/s", "peak RSS MB"]),
    "recommend": ("imgrec", "seed", ["seconds, top-k of every item", "peak RSS MB"]),
    "kernels": ("native", "portable", ["train images/s", "embed images/s", "peak RSS MB"]),
}

pytestmark = pytest.mark.slow


def tables(output: str) -> dict[str, tuple[str, dict[str, list[str]]]]:
    """{stage: (header row, {metric: cells})} from the runner's Markdown."""
    found = {}
    for section in re.split(r"^## ", output, flags=re.MULTILINE)[1:]:
        stage = section.split(":", 1)[0]
        lines = [line.strip(" |") for line in section.splitlines() if line.startswith("| ")]
        rows = [[cell.strip() for cell in line.split("|")] for line in lines]
        found[stage] = (" | ".join(rows[0]), {row[0]: row[1:] for row in rows[1:]})
    return found


def test_smoke_run_prints_every_stage_with_finite_ratios(tmp_path: Path):
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke"]
    command += ["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work")]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    found = tables(run.stdout)
    assert list(found) == list(EXPECTED)
    for stage, (a, b, metrics) in EXPECTED.items():
        header, rows = found[stage]
        assert header.startswith(f"metric | {a} | {b} | ratio {a}/{b}"), (stage, header)
        for metric in metrics:
            value_a, value_b, ratio, _ = rows[metric]
            assert float(value_a) > 0 and float(value_b) > 0, (stage, metric, rows[metric])
            assert math.isfinite(float(ratio)) and float(ratio) > 0, (stage, metric, ratio)
    assert "kernels native: torch" in run.stdout and "kernels portable: torch" in run.stdout
    assert (tmp_path / "data" / "catalog-200" / "manifest.json").exists()
