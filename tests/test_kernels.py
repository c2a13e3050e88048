"""Portable kernels are in force in the tests, every stage and the query command."""

import os
import subprocess
import sys

import pytest
import torch

from imgrec import kernels
from imgrec.errors import ImgrecError

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


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="portable, native"):
        kernels.apply("fastest")


@x86_only
def test_check_portable_names_what_is_wrong(environment):
    environment.setenv(kernels.MODE_VARIABLE, "portable")
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
    assert "kernels native" in _machine("native")


def test_a_bad_imgrec_kernels_falls_back_to_portable():
    assert "kernels portable" in _machine("fastest")
