"""Seeds and devices: one helper for each, as nanochat's common.py."""

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.pipeline.runtime import World, make_deterministic, pick_device, seed_everything, start
from imgrec.training.model import CNNClassifier, ModelConfig
from imgrec.training.train import TrainConfig

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


def test_world_is_one_process_outside_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_environment() == World(rank=0, size=1, local_rank=0, local_size=1)


def test_world_comes_from_torchruns_environment(monkeypatch):
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    world = World.from_environment()
    assert world == World(rank=5, size=8, local_rank=1, local_size=4)
    assert not world.is_main


@pytest.mark.parametrize(
    ("world", "threads", "prints"),
    [
        (World(), 4, True),
        (World(rank=0, size=2, local_rank=0, local_size=2), 2, True),
        (World(rank=3, size=4, local_rank=1, local_size=2), 2, False),
        (World(rank=1, size=8, local_rank=1, local_size=8), 1, False),  # never 0 threads
    ],
)
def test_ranks_share_the_threads_and_rank_0_alone_prints(world, threads, prints, capsys):
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        device = start(TrainConfig(device="cpu", num_threads=4), world)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
    assert device == torch.device("cpu")
    assert ("machine:" in capsys.readouterr().out) == prints


@pytest.fixture
def restores_determinism():
    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    yield
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1])
    torch.utils.deterministic.fill_uninitialized_memory = before[2]


def test_make_deterministic_keeps_the_flag_but_not_the_nan_fill(restores_determinism):
    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = True
    make_deterministic(1)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.utils.deterministic.fill_uninitialized_memory
    assert torch.get_num_threads() == 1


def test_make_deterministic_sets_the_flag_without_importing_inductor():
    # A fresh process: this one may have imported inductor already. The import cost each
    # stage 1.4 s; the flag must still be on, and as an error, not a warning.
    probe = (
        "import sys, torch; from imgrec.pipeline.runtime import make_deterministic;"
        "make_deterministic(1);"
        "print(torch.are_deterministic_algorithms_enabled(),"
        " torch.is_deterministic_algorithms_warn_only_enabled(), 'torch._inductor' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def weights_after_two_steps() -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = CNNClassifier(ModelConfig(num_classes=3)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        x = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 3, (4,)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return [tensor.clone() for tensor in model.state_dict().values()]


def test_skipping_the_nan_fill_changes_no_bit_of_training(restores_determinism):
    make_deterministic(2)
    torch.utils.deterministic.fill_uninitialized_memory = True
    filled = weights_after_two_steps()
    make_deterministic(2)
    unfilled = weights_after_two_steps()
    assert all(torch.equal(a, b) for a, b in zip(filled, unfilled, strict=True))


@pytest.mark.parametrize(("precision", "tf32"), [("fp32", False), ("tf32", True), ("bf16", False)])
def test_precision_sets_what_cuda_computes_fp32_in(precision, tf32, restores_determinism, capsys):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = not tf32  # torch's default is TF32 convolutions
        start(TrainConfig(device="cpu"), precision=precision)
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    said = "the CPU computes fp32" in capsys.readouterr().out
    assert said == (precision == "tf32")  # on a CPU, tf32 is fp32, and it says so
