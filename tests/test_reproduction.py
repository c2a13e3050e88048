"""When the reproduction check holds a run to bit-identity, and when to tolerances."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from imgrec import fingerprint
from imgrec.fingerprint import Fingerprint
from imgrec.pipeline import kernels
from imgrec.reproduction import bits_expected, check

COMMITTED = {"kernels": "portable", "device": "cpu", "num_threads": 2, "nproc": 1, "lr": 0.001}


@pytest.mark.parametrize(
    ("change", "named"),
    [({"num_threads": 1}, "num_threads"), ({"nproc": 2}, "nproc"), ({"lr": 0.01}, "lr")],
)
def test_other_params_than_the_committed_runs_get_the_tolerance_verdict(tmp_dir, change, named):
    (tmp_dir / "params.yaml").write_text(yaml.safe_dump(COMMITTED | change))
    strict, why = bits_expected(COMMITTED)
    assert not strict
    assert why == f"other params than the committed run's ({named})"


@pytest.mark.skipif(not kernels.applies_here(), reason="portable kernels are x86-64 ones")
def test_the_committed_params_on_the_cpu_are_held_to_bit_identity(tmp_dir):
    (tmp_dir / "params.yaml").write_text(yaml.safe_dump(COMMITTED))
    strict, why = bits_expected(COMMITTED)
    assert strict and why == "x86-64 with AVX2 or better, portable kernels, the CPU"


@pytest.mark.skipif(not kernels.applies_here(), reason="portable kernels are x86-64 ones")
@pytest.mark.parametrize("change", [{"checkpoint_every": 100}, {"dask_scheduler": "tcp://h:1"}])
def test_params_that_decide_no_bit_keep_bit_identity(tmp_dir, change):
    (tmp_dir / "params.yaml").write_text(yaml.safe_dump(COMMITTED | change))
    assert bits_expected(COMMITTED)[0]


# A committed run in miniature: what `check` reads (params, dvc.yaml's metrics files,
# dvc.lock's exact outputs, the tolerances, the train stage's kernel fingerprint).
FINGERPRINT = Fingerprint({"device": "cpu", "num_threads": "2"},
                          {"conv1.forward": "a" * 32, "conv2.forward": "b" * 32})  # fmt: skip
TOLERANCES = {
    "exact_outputs": ["data/prepared"],
    "metrics": {"metrics/evaluate.json": {"val_accuracy": 0.004}},
    "kernel_fingerprint": "reports/kernel_fingerprint.txt",
}


def _git(*args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)  # fmt: skip


def _commit_run(accuracy: float, kernels: Fingerprint) -> None:
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/evaluate.json").write_text(json.dumps({"val_accuracy": accuracy}))
    fingerprint.save("reports/kernel_fingerprint.txt", kernels)
    _git("add", "-A")
    _git("commit", "-qm", "a run")


@pytest.fixture
def committed_run(tmp_dir):
    (tmp_dir / "params.yaml").write_text(yaml.safe_dump(COMMITTED))
    (tmp_dir / "reproducibility.yaml").write_text(yaml.safe_dump(TOLERANCES))
    pipeline = {"stages": {"evaluate": {"metrics": [{"metrics/evaluate.json": {"cache": False}}]}}}
    (tmp_dir / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    lock = {"stages": {"prepare": {"outs": [{"path": "data/prepared", "md5": "c" * 32}]}}}
    (tmp_dir / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_dir / "figure.png").write_bytes(b"\x89PNG figure")
    _git("init", "-q")
    _commit_run(0.95, FINGERPRINT)
    return tmp_dir


def test_equal_fingerprints_hold_every_byte_and_name_the_one_that_moved(committed_run):
    Path("figure.png").write_bytes(b"\x89PNG figure, one byte more")
    passed, report = check("HEAD", "reproducibility.yaml")
    assert not passed
    assert "FAILED: not bit-identical" in report
    assert "kernels whose fingerprint equals the committed run's" in report
    assert "figure.png" in report


def test_differing_fingerprints_name_the_operations_and_judge_by_tolerance(committed_run):
    """As if the committed run came from a machine whose conv2 forward gives other bits."""
    other_machine = Fingerprint(FINGERPRINT.setup,
                                FINGERPRINT.operations | {"conv2.forward": "d" * 32})  # fmt: skip
    _commit_run(0.95, other_machine)
    fingerprint.save("reports/kernel_fingerprint.txt", FINGERPRINT)  # this machine's
    Path("metrics/evaluate.json").write_text(json.dumps({"val_accuracy": 0.953}))  # float noise
    Path("figure.png").write_bytes(b"\x89PNG other bits")
    passed, report = check("HEAD", "reproducibility.yaml")
    assert passed, report
    assert "within tolerance" in report
    assert "differ from the committed run's at conv2.forward: 1 operation(s)," in report

    # A regression is one all the same: five points of accuracy fail on any machine.
    Path("metrics/evaluate.json").write_text(json.dumps({"val_accuracy": 0.90}))
    passed, report = check("HEAD", "reproducibility.yaml")
    assert not passed
    assert "| metrics/evaluate.json:val_accuracy | 0.95 | 0.9 | -0.05 | 0.004 | FAIL" in report


def test_a_committed_run_without_a_fingerprint_is_judged_by_the_machine(committed_run):
    _git("rm", "-q", "reports/kernel_fingerprint.txt")
    _git("commit", "-qm", "an older run")
    Path("figure.png").write_bytes(b"\x89PNG other bits")
    passed, report = check("HEAD", "reproducibility.yaml")
    if kernels.applies_here():
        assert not passed and "x86-64 with AVX2 or better, portable kernels, the CPU" in report
    else:
        assert passed and "within tolerance" in report


def test_a_gpu_run_against_cpu_results_says_so_and_names_the_operations(tmp_dir):
    (tmp_dir / "params.yaml").write_text(yaml.safe_dump(COMMITTED))
    gpu = Fingerprint(FINGERPRINT.setup | {"device": "cuda"},
                      FINGERPRINT.operations | {"conv1.forward": "e" * 32})  # fmt: skip
    strict, why = bits_expected(COMMITTED, (FINGERPRINT, gpu))
    assert not strict
    assert why.startswith("a cuda device, the committed run a cpu one; kernels that differ")
    assert "setup:device, conv1.forward" in why
