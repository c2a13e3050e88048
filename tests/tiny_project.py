"""The project copied with tiny params and reproduced through real `dvc repro`: the helpers
the test files that drive DVC share (each file builds its own copy, so that two pytest
workers never write to one)."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {"rows": 200, "img_size": 32, "epochs": 2, "batch_size": 16}


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


def reproduced_tiny_project(folder: Path) -> Path:
    """The project's code and stages in `folder` with TINY params, reproduced once (its log
    in repro.log)."""
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "labels", folder / "labels")  # the (empty) corrections file
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | TINY
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("init", "--no-scm", "-q", cwd=folder)
    shutil.copytree(ROOT / ".dvc" / "plots", folder / ".dvc" / "plots")  # templates
    dvc("config", "plots.html_template", "plots/offline.html", cwd=folder)
    (folder / "repro.log").write_text(dvc("repro", cwd=folder).stdout)
    return folder


def declared_outputs(dvc_yaml: dict) -> list[str]:
    paths = []
    for stage in dvc_yaml["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def digest(folder: Path, paths: list[str]) -> dict[str, str]:
    hashes = {}
    for name in paths:
        target = folder / name
        for file in sorted([target] if target.is_file() else target.rglob("*")):
            if file.is_file():
                hashes[str(file.relative_to(folder))] = hashlib.md5(file.read_bytes()).hexdigest()
    return hashes


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)
