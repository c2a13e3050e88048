"""Data-parallel training in several processes: torchrun's launcher and the process group.

`-S nproc=N` makes the train stage start N ranks of itself on this machine through
the launcher the `torchrun` CLI runs (`torchrun --standalone`); under a torchrun the
user started (say on several machines) the stage takes torchrun's world as it is.
Each rank is the same stage script with the same arguments; `runtime.World` tells
it which rank it is.
"""

import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from imgrec.errors import ImgrecError
from imgrec.pipeline.runtime import TORCHRUN_VARIABLES, World

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)  # torchrun's


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def launch(nproc: int, argv: list[str] | None = None) -> None:
    """Run `python argv` (default: this script, its interpreter flags and arguments) as
    `nproc` ranks on this machine; return when all have succeeded."""
    # Here, not at the top: only the launching process needs the launcher.
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        # What `torchrun --standalone` sets: a rendezvous on a free port of this machine.
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        run_id=str(uuid.uuid4()),
        max_restarts=0,  # a failed rank fails the stage; `dvc repro` is the retry
        signals_to_handle=",".join(sig.name for sig in HANDLED_SIGNALS),
        logs_specs=DefaultLogsSpecs(log_dir=os.devnull),  # ranks print here; no temp folders
    )
    argv = sys.orig_argv[1:] if argv is None else argv
    sys.stdout.flush()
    # The launcher takes these signals over to stop the ranks, and never gives them back.
    handlers = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    # It also logs its settings and dumps every failure at length: the ranks' own `error:`
    # lines say what went wrong.
    logging.disable(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-u", *argv)  # -u: as torchrun
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode < 0:
            cause = f"was killed by {signal.Signals(-failure.exitcode).name}"
        else:
            cause = "failed; its message is above"
        raise ImgrecError(f"rank {rank} of {nproc} {cause}.") from None
    except SignalException as stop:
        # The launcher has already passed the signal on to the ranks and waited for them.
        raise KeyboardInterrupt(f"stopped by {stop.sigval.name}") from None
    finally:
        logging.disable(logging.NOTSET)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """The ranks' process group for the block (gloo on CPU, NCCL on CUDA); rank 0 alone
    logs below warnings. Nothing to join for a world of one."""
    if world.size == 1:
        yield
        return
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    try:
        yield
    except RuntimeError as error:
        if not _peer_lost(error):
            raise
        # Another rank stopped first and says why; the launcher then stops the rest.
        raise ImgrecError(f"rank {world.rank} of {world.size} stopped as another did.") from None
    finally:
        dist.destroy_process_group()


# How gloo reports a peer that exited (NCCL waits for the launcher to stop the rank).
_PEER_LOST = ("closed by peer", "reset by peer", "Broken pipe")


def _peer_lost(error: RuntimeError) -> bool:
    return isinstance(error, dist.DistError) or any(text in str(error) for text in _PEER_LOST)
