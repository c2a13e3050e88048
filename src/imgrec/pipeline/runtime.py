"""One place for seeds, determinism, threads and the device (as nanochat's common.py)."""

import logging
import os
import random
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch

from imgrec.config import ComputeConfig
from imgrec.errors import ImgrecError
from imgrec.pipeline import kernels

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds legacy global-RNG users, e.g. in libraries
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_deterministic(num_threads: int) -> None:
    """Deterministic kernels and a fixed thread count.

    CPU convolutions and BLAS products split their reductions by thread, so the
    thread count changes the last bits of the weights: it is a param, not the
    core count or the environment's OMP_NUM_THREADS.
    On the CPU the flag costs little once torch's NaN fill is off (off/on
    images/s 1.08, CPU time per batch 1.02, within the noise of a shared 2-core
    CPU; 1.18 with the fill: benchmarks/RESULTS.md); on CUDA it also disables
    cuDNN autotuning and needs CUBLAS_WORKSPACE_CONFIG.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    kernels.pin_threads(num_threads)  # torch's and the BLAS and OpenMP pools
    # ATen's flag alone: torch.use_deterministic_algorithms also sets inductor's, and importing
    # torch._inductor for it costs each stage process 1.4 s (of its 4); nothing here compiles.
    torch._C._set_deterministic_algorithms(True)
    # With the flag, torch also fills every new tensor with NaN before the op that
    # writes it overwrites it: on the CPU that fill was the flag's whole cost in
    # training, and it changes no bit of the weights (benchmarks/RESULTS.md, "determinism").
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


# What torchrun sets in each rank's environment; a rank is under torchrun if it has them all.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (one rank unless torchrun started it)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among those on this machine: its GPU, its share of the cores
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Self:
        """The world torchrun describes in the environment of each rank it starts."""
        if not all(name in os.environ for name in TORCHRUN_VARIABLES):
            return cls()
        return cls(*(int(os.environ[name]) for name in TORCHRUN_VARIABLES))


ONE_PROCESS = World()


def set_precision(precision: str = "fp32") -> None:
    """What a CUDA GPU computes fp32 convolutions and matmuls in: `tf32` lets cuDNN and cuBLAS
    round their inputs to TF32 (faster on Ampere and later; other bits, and an image's vector
    then depends on its place in the batch: measured on an H200); anything else is true fp32
    (torch's default lets cuDNN use TF32). `bf16` autocasts in training; what it leaves in
    fp32 stays fp32. The CPU has no TF32: these flags change nothing there."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def start(
    config: ComputeConfig, world: World = ONE_PROCESS, precision: str = "fp32"
) -> torch.device:
    """Threads, deterministic kernels, the device and its fp32 `precision` (`set_precision`)
    for a stage or one of its ranks; rank 0 prints where it runs."""
    # The ranks on a machine share its cores; the share is fixed by nproc and num_threads
    # (never the core count), so the bits stay a function of the params.
    make_deterministic(max(1, config.num_threads // world.local_size))
    device = pick_device(config.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)  # one GPU per rank
        torch.cuda.set_device(device)
    set_precision(precision)
    if world.is_main:
        ranks = f"; rank 0 of {world.size}" if world.size > 1 else ""
        print(f"{kernels.machine_line()}; device {device}{ranks}")
        if precision == "tf32" and device.type != "cuda":
            print("precision tf32 is a CUDA setting: the CPU computes fp32 (the same bits)")
    return device


def pick_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA when present, else CPU; `cpu`, `cuda` or `cuda:N` force one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ImgrecError(f"param device must be auto, cpu or cuda[:N], got {name!r}.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ImgrecError("param device asks for cuda, but torch sees no CUDA GPU here.")
    return device
