"""Resumable training state: everything that decides the next bit of a training run.

Training (`train.train`) saves it atomically at every epoch end but the last, every
`checkpoint_every` batches, and when SIGTERM or Ctrl-C asks it to stop (`StopRequests`);
a rerun of the same run (same prepared data, bit-deciding train config, code, libraries
and world size: `RunIdentity`) resumes from it, mid-epoch too (`ResumableSampler`), and
ends byte-identical to a run never interrupted. The file lives where DVC does not delete
it before the stage runs (its path comes from dvc.yaml, outside every output); one file
per workspace, removed after a successful run (`Resume.finished`).

A state is data, loaded with `weights_only=True`: plain values and tensors only.
"""

import collections
import hashlib
import itertools
import logging
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from imgrec.errors import first_line
from imgrec.files import atomic_file
from imgrec.pipeline import kernels
from imgrec.pipeline.runtime import World

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def code_md5(script: str | os.PathLike) -> str:
    """One md5 over a stage script and the package files it imports: the train stage's
    code deps, derived from the import graph as dvc.yaml's are (`stage_deps`)."""
    from imgrec.stage_deps import derived_deps  # here: it reads dvc.yaml (PyYAML) for stages only

    script = Path(script).resolve()
    root = script.parents[1]  # stages/X.py sits beside src/
    digest = hashlib.md5()
    for name in [*derived_deps(root, script), script.relative_to(root).as_posix()]:
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What makes a saved state this run's: any difference and training starts fresh."""

    prepared_md5: str
    train_config: dict  # the fields that decide the bits, nproc as the world size
    code_md5: str
    # Where it computes: the device, threads per rank, and with native kernels the CPU.
    compute: str = ""
    max_batches: int | None = None  # the smoke tests' cap on batches per epoch
    libraries: str = f"torch {torch.__version__}, numpy {np.__version__}"

    def difference(self, other: dict) -> str | None:
        """What differs from a saved identity, in a few words; None when it is the same."""
        names = {
            "prepared_md5": "the prepared data",
            "code_md5": "the code",
            "compute": "the device, threads or native kernels' CPU",
            "max_batches": "--max-batches",
            "libraries": "the torch or numpy version",
        }
        if other.get("train_config") != self.train_config:
            saved = other.get("train_config") or {}
            changed = sorted(
                k for k in self.train_config.keys() | saved.keys()
                if self.train_config.get(k) != saved.get(k)
            )  # fmt: skip
            return f"the train config ({', '.join(changed)})"
        for key, words in names.items():
            if other.get(key) != getattr(self, key):
                return words
        return None


# ---- random number generators: every one that decides a bit ----------------------------


def capture_rng(generator: torch.Generator) -> dict:
    """Python's, NumPy's, torch's (CPU and every visible GPU's: dropout on CUDA draws from
    the GPU's) and the data generator's state (on whatever device it lives), as data."""
    numpy_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global one, as seeded
    return {
        "python": random.getstate(),
        "numpy": {
            "key": numpy_state["state"]["key"].tolist(),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generator": generator.get_state(),
    }


def restore_rng(rng: dict, generator: torch.Generator) -> None:
    random.setstate(rng["python"])
    numpy = rng["numpy"]
    np.random.set_state(  # noqa: NPY002 - the legacy global RNG is one that libraries use
        {
            "bit_generator": "MT19937",
            "state": {"key": np.asarray(numpy["key"], dtype=np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    generator.set_state(rng["generator"])


# ---- the state itself --------------------------------------------------------------------


@dataclass
class RankState:
    """What differs between DDP ranks (one entry for a single process)."""

    rng: dict  # capture_rng() at the saved batch boundary
    epoch_sums: list[float]  # [loss sum, correct, seen] of the epoch so far
    epoch_generator: torch.Tensor | None  # the data generator as the epoch began (its order)


@dataclass
class TrainState:
    """A training run stopped at a batch boundary: `batch` batches of `epoch` are done
    (0: the epoch has not begun)."""

    epoch: int
    batch: int
    # Rank 0's weights and BatchNorm statistics: DDP gives every rank rank 0's buffers at
    # each forward pass (broadcast_buffers) and the loop at each epoch end.
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict  # ReduceLROnPlateau: best, bad-epoch and cooldown counters, last LR
    stopping: dict  # EarlyStopping's best loss, best epoch, best weights, epochs without gain
    history: list[dict]  # the finished epochs' records: dvclive's curves are replayed from it
    ranks: list[RankState] = field(default_factory=list)

    def where(self, epochs: int, n_batches: int) -> str:
        at = f"epoch {self.epoch} of {epochs}"
        return f"{at}, batch {self.batch} of {n_batches}" if self.batch else at


def save_state(path: str | os.PathLike, state: TrainState, identity: RunIdentity) -> None:
    """Write atomically and durably: a kill or power loss mid-write leaves the old state."""
    payload = {
        "format": FORMAT_VERSION,
        "identity": asdict(identity),
        # vars, not asdict: asdict would deep-copy every tensor first.
        "state": {**vars(state), "ranks": [vars(rank) for rank in state.ranks]},
    }
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())


def load_state(path: str | os.PathLike, identity: RunIdentity, world: World) -> TrainState | None:
    """The saved state if it is this run's; else None, with one line saying why not.

    Rank 0 reads and decides, and under DDP every rank gets its answer: all ranks resume
    alike, even where only rank 0's machine holds the file.
    """
    state = _read_state(Path(path), identity) if world.is_main else None
    if world.size > 1:
        shared = [state]
        dist.broadcast_object_list(shared, src=0)
        state = shared[0]
    return state


IGNORED = "train: ignoring %s: %s; starting fresh"  # one line, whatever the reason


def _read_state(path: Path, identity: RunIdentity) -> TrainState | None:
    if not path.exists():
        return None
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {payload.get('format')!r}, not {FORMAT_VERSION}")
        differs = identity.difference(payload["identity"])
        if differs:
            log.info(IGNORED, path, f"another run's ({differs} differs)")
            return None
        fields_ = dict(payload["state"])
        ranks = [RankState(**rank) for rank in fields_.pop("ranks")]
        return TrainState(**fields_, ranks=ranks)
    except Exception as error:  # a truncated or foreign file is no reason to stop training
        log.info(IGNORED, path, f"it cannot be read ({first_line(error)})")
        return None


@dataclass(frozen=True)
class Resume:
    """Where training keeps its resumable state, and what makes a state this run's."""

    path: Path
    identity: RunIdentity

    @classmethod
    def of_run(cls, path, prepared_md5: str, train_config: dict, device: torch.device, *,
               script, max_batches: int | None) -> "Resume":  # fmt: skip
        """This run: its data, its bit-deciding config (`TrainConfig.identity`), its code
        (the stage `script` and what it imports), where it computes, and its libraries.
        Portable kernels give the same bits on any x86-64 CPU; native ones are the CPU's."""
        compute = f"device {device}, {torch.get_num_threads()} threads"
        if device.type == "cuda":  # another GPU, GPU count (its RNG states) or cuDNN: other bits
            compute += (
                f"; {torch.cuda.get_device_name(device)} of {torch.cuda.device_count()} GPUs, "
                f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
            )
        if train_config["kernels"] == "native":
            compute += f"; {kernels.machine_line()}"
        identity = RunIdentity(prepared_md5, train_config, code_md5(script), compute, max_batches)
        return cls(Path(path), identity)

    def finished(self) -> None:
        """After a successful run (outputs written): nothing is left to resume."""
        self.path.unlink(missing_ok=True)


class StopRequests:
    """SIGTERM and SIGINT (a preemption notice, Ctrl-C) ask training to stop at the next
    batch boundary, after saving, instead of unwinding at once and losing the epoch."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._handlers: dict = {}

    def __enter__(self) -> "StopRequests":
        for signum in self.SIGNALS:
            if signal.getsignal(signum) != signal.SIG_IGN:  # an ignored signal stays ignored
                self._handlers[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.received == name:
            raise KeyboardInterrupt("stopped by a second Ctrl-C, without saving")
        self.received = name

    def any_rank(self, world: World, device: torch.device) -> bool:
        """Whether any rank was asked to stop: under DDP all ranks stop at the same batch
        (a collective every rank calls at every boundary)."""
        asked = self.received is not None
        if world.size > 1:
            flag = torch.tensor([float(asked)], device=device)
            dist.all_reduce(flag)
            asked = flag.item() > 0
            self.received = self.received or ("a signal to another rank" if asked else None)
        return asked


class ResumableSampler(torch.utils.data.Sampler[int]):
    """The wrapped sampler's order, able to start a pass at a saved position.

    The order is drawn lazily, from the generator as it is when the first batch is
    fetched; so a resumed pass draws it from the epoch's starting state, skips what was
    done, and only then restores the RNGs saved at that batch boundary (`then`).
    """

    def __init__(self, inner: torch.utils.data.Sampler[int]):
        self.inner = inner
        self._skip, self._then = 0, None

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def resume_next_pass(self, skip: int, then: Callable[[], None]) -> None:
        self._skip, self._then = skip, then

    def __iter__(self) -> Iterator[int]:
        order = iter(self.inner)
        skip, then, self._skip, self._then = self._skip, self._then, 0, None
        if then is not None:
            collections.deque(itertools.islice(order, skip), maxlen=0)
            then()
        yield from order
