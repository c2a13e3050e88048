"""Portable kernels are in force in the tests, every stage and the query command."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.pipeline import kernels

ROOT = Path(__file__).resolve().parents[1]
x86_only = pytest.mark.skipif(not kernels.applies_here(), reason="the caps name x86-64 ISAs")


@pytest.fixture
def environment(monkeypatch):
    """Let a test change the kernel variables; monkeypatch puts them back afterwards."""
    for name in (kernels.MODE_VARIABLE, *kernels.PORTABLE_ENVIRONMENT):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    return monkeypatch


def test_the_test_process_runs_portable_kernels():
    assert kernels.active() == "portable"
    kernels.check_portable()  # raises if numpy or torch loaded before imgrec


@x86_only
def test_torch_uses_avx2_kernels_here():
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    for name, value in kernels.PORTABLE_ENVIRONMENT.items():
        assert os.environ[name] == value


@x86_only
def test_native_lifts_the_caps_portable_set_and_keeps_a_users_own(environment):
    kernels.apply("portable")
    environment.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # the user's own choice
    kernels.apply("native")
    assert kernels.active() == "native"
    assert "ATEN_CPU_CAPABILITY" not in os.environ
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    kernels.apply("portable")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"


@x86_only
def test_environment_for_a_child_process():
    inherited = {"ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell", "PATH": "/bin"}
    native = kernels.environment_for("native", inherited)
    assert "ATEN_CPU_CAPABILITY" not in native  # portable's cap, inherited: lifted
    assert native["OPENBLAS_CORETYPE"] == "Haswell"  # not portable's value: left alone
    assert native["PATH"] == "/bin" and native[kernels.MODE_VARIABLE] == "native"
    portable = kernels.environment_for("portable", {"PATH": "/bin"})
    assert portable == {"PATH": "/bin", kernels.MODE_VARIABLE: "portable",
                        **kernels.PORTABLE_ENVIRONMENT}  # fmt: skip


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="portable, native"):
        kernels.apply("fastest")


@x86_only
def test_check_portable_names_what_is_wrong(environment):
    environment.setenv(kernels.MODE_VARIABLE, "portable")
    environment.setattr(kernels, "portable_in_force", lambda: False)
    environment.setattr(kernels, "in_force", lambda: {"torch_isa": "AVX512", "blas": "x"})
    with pytest.raises(ImgrecError, match="torch uses AVX512"):
        kernels.check_portable()


def _machine(mode: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != kernels.MODE_VARIABLE}
    if mode:
        env[kernels.MODE_VARIABLE] = mode
    done = subprocess.run(
        [sys.executable, "-m", "imgrec", "machine"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout


def test_the_query_command_runs_portable_kernels_by_default():
    line = _machine(None)
    assert line.startswith("machine: ") and "kernels portable" in line
    if kernels.applies_here():
        assert "AVX2" in line.split("torch", 1)[1]


def test_the_query_command_follows_imgrec_kernels():
    line = _machine("native")
    assert "kernels native" in line
    if kernels.applies_here() and "avx512f" in kernels.cpu_flags():
        assert "AVX2" not in line.split("torch", 1)[1].split(",")[0]  # torch's widest ISA


def _clean_environment() -> dict[str, str]:
    """As a user's shell would be: none of the caps, no OpenBLAS core type forced."""
    drop = {kernels.MODE_VARIABLE, "OPENBLAS_CORETYPE", *kernels.PORTABLE_ENVIRONMENT}
    return {k: v for k, v in os.environ.items() if k not in drop}


@x86_only
def test_a_stage_that_loads_numpy_first_still_runs_portable_kernels(tmp_path):
    """The harness restarts such a stage once, with the caps set before numpy loads."""
    params = "source: builtin:digits\nrows: 5\ndask_scheduler: local\n"
    (tmp_path / "params.yaml").write_text(params)
    script = tmp_path / "fetch.py"
    script.write_text(
        "import numpy  # before imgrec: OpenBLAS picks its kernels now\n"
        "from imgrec.pipeline import kernels, stage\n"
        "from imgrec.data.fetch import FetchConfig\n"
        "def main(args, config):\n"
        "    print('in force:', kernels.portable_in_force(), kernels.in_force()['blas'])\n"
        "stage.run(main, FetchConfig, ['out'])\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), "--out", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_clean_environment(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "in force: True" in done.stdout
    assert done.stdout.count("machine: ") == 1  # one line, from the restarted process


def first_library_import(script: Path) -> str:
    """The top module of the first import in `script` outside the standard library."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for top in (name.split(".")[0] for name in names):
            if top not in sys.stdlib_module_names:
                return top
    return ""


def test_every_stage_imports_imgrec_before_any_library():
    """Else the stage starts twice, paying its imports twice (recommend did: 1.4 s a run)."""
    stages = sorted((ROOT / "stages").glob("*.py"))
    assert stages
    assert {script.name: first_library_import(script) for script in stages} == {
        script.name: "imgrec" for script in stages
    }


def test_a_bad_imgrec_kernels_falls_back_to_portable():
    assert "kernels portable" in _machine("fastest")


def test_the_thread_param_wins_over_the_environment_in_every_pool():
    """OMP_NUM_THREADS=1 in the environment (a cluster's, a container's): after pin_threads(2),
    numpy's OpenBLAS, torch, and a pool loaded later all run 2 threads."""
    code = (
        "import imgrec, numpy, torch\n"
        "from imgrec.pipeline import kernels\n"
        "from threadpoolctl import threadpool_info\n"
        "kernels.pin_threads(2)\n"
        "import faiss\n"  # loads its own OpenMP after the pin
        "print(sorted({i['num_threads'] for i in threadpool_info()}), torch.get_num_threads(),"
        " faiss.omp_get_max_threads())\n"
    )
    one = dict.fromkeys(kernels.THREAD_VARIABLES, "1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ | one, check=True)  # fmt: skip
    assert done.stdout.split() == ["[2]", "2", "2"], done.stdout
