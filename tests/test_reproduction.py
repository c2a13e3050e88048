"""When the reproduction check holds a run to bit-identity, and when to tolerances."""

import pytest
import yaml

from imgrec import kernels
from imgrec.reproduction import bits_expected

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
