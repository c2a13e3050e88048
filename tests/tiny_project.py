"""The project copied with tiny params and reproduced through real `dvc repro`: the helpers
the test files that drive DVC share. One pytest run reproduces it once; each file (and each
test that changes it) works in a copy of its own, so that two pytest workers never write to
one."""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# One thread: pytest runs two workers on two cores, and at this size a second thread gains
# nothing; two tiny reproductions side by side took 49-59 s at 2 threads each, 34 s at 1.
TINY = {"rows": 200, "img_size": 32, "epochs": 2, "batch_size": 16, "num_threads": 1}


def dvc_env(project: Path) -> dict[str, str]:
    """This interpreter's venv first on PATH (stage commands say `python`), the copy's package."""
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(project / "src"),
    }


def dvc(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run dvc in `cwd` (with `env` added to its environment); fail the test if it fails."""
    dvc_bin = Path(sys.executable).with_name("dvc")
    result = subprocess.run(
        [str(dvc_bin), *args], cwd=cwd, capture_output=True, text=True,
        env=dvc_env(cwd) | (env or {}),
    )  # fmt: skip
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


def _shared_folder(tmp_path_factory) -> Path:
    """The pytest run's own temporary folder, which its xdist workers share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_shared(shared: Path) -> Path:
    """`shared`/tiny-project, reproduced unless it already is; one builder at a time."""
    built = shared / "tiny-project"
    with (shared / "tiny-project.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (built / "repro.log").exists():  # written last: an unfinished build is redone
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir()
            reproduced_tiny_project(built)
    return built


_builders: list[subprocess.Popen] = []


def start_building(tmp_path_factory) -> None:
    """Reproduce the run's tiny project in a subprocess now, with the environment the session
    started with, while this worker runs other tests: the first test that needs it then waits
    less, and no core idles while one worker builds and the other waits."""
    shared = _shared_folder(tmp_path_factory)
    log = shared / f"tiny-project-build-{os.getpid()}.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, __file__, str(shared)], stdout=out,
                                   stderr=subprocess.STDOUT, env=dict(os.environ))  # fmt: skip
    _builders.append(process)


def stop_building() -> None:
    for process in _builders:
        if process.poll() is None:
            process.kill()
        process.wait()


def copy_of_the_tiny_project(tmp_path_factory, name: str) -> Path:
    """A copy of this pytest run's one reproduced tiny project, in a new folder `name`N: built
    once per run (start_building, else the first worker to ask; any other waits on a lock), so
    two files' module fixtures and two workers cost one `dvc repro`, not four."""
    for process in _builders:
        process.wait()  # had it failed, build_shared rebuilds here and the test sees why
    built = build_shared(_shared_folder(tmp_path_factory))
    return copy_project(built, tmp_path_factory.mktemp(name))


def copy_project(project: Path, folder: Path, *, run_cache: bool = True) -> Path:
    """`project` copied into `folder` (which may exist); without DVC's run cache, a changed
    stage really runs rather than being restored."""
    skip = {"runs"} if not run_cache else set()
    shutil.copytree(project, folder, dirs_exist_ok=True, ignore=lambda where, names: (
        skip & set(names) if Path(where) == project / ".dvc" / "cache" else set()
    ))  # fmt: skip
    return folder


def declared_outputs(dvc_yaml: dict, stage_name: str | None = None) -> list[str]:
    """The paths dvc.yaml declares as outputs (outs, metrics, plots): of one stage, or all."""
    paths = []
    for name, stage in dvc_yaml["stages"].items():
        if stage_name not in (None, name):
            continue
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


if __name__ == "__main__":  # start_building's subprocess
    build_shared(Path(sys.argv[1]))
