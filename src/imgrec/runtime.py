"""One place for seeds, determinism, threads and the device (as nanochat's common.py)."""

import logging
import os
import random

import numpy as np
import torch

from imgrec import kernels
from imgrec.config import ComputeConfig
from imgrec.errors import ImgrecError

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds legacy global-RNG users, e.g. in libraries
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_deterministic(num_threads: int) -> None:
    """Deterministic kernels and a fixed thread count.

    CPU convolutions split their reductions by thread, so the thread count
    changes the last bits of the weights: it is a param, not the core count.
    Deterministic kernels cost some speed (about a fifth of training throughput
    on a 2-core CPU, measured with benchmarks/); on CUDA they also disable cuDNN
    autotuning and need CUBLAS_WORKSPACE_CONFIG.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def start(config: ComputeConfig) -> torch.device:
    """Threads, deterministic kernels and the device for a stage; prints where it runs."""
    make_deterministic(config.num_threads)
    device = pick_device(config.device)
    print(f"{kernels.machine_line()}; device {device}")
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
