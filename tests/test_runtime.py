"""Seeds and devices: one helper for each, as nanochat's common.py."""

import random

import numpy as np
import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.runtime import pick_device, seed_everything

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@no_gpu
def test_auto_picks_cpu_without_a_gpu():
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device() == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_picks_cuda_with_a_gpu():
    assert pick_device("auto").type == "cuda"


def test_cpu_is_always_available():
    assert pick_device("cpu") == torch.device("cpu")


@no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused(name):
    with pytest.raises(ImgrecError, match="cuda"):
        pick_device(name)


@pytest.mark.parametrize("name", ["nonsense", "", "gpu"])
def test_unknown_device_is_refused(name):
    with pytest.raises(ImgrecError, match="param device"):
        pick_device(name)


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()  # noqa: NPY002


def test_seed_everything_repeats_every_generator():
    seed_everything(5)
    first = draws()
    seed_everything(5)
    assert draws() == first
    seed_everything(6)
    other = draws()
    for a, b in zip(first, other, strict=True):
        assert a != b


def test_seed_everything_returns_a_seeded_generator():
    first = torch.rand(4, generator=seed_everything(3))
    again = torch.rand(4, generator=seed_everything(3))
    other = torch.rand(4, generator=seed_everything(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
