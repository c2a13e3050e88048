"""Where fetch and prepare run their Dask tasks: a local cluster, or one the team runs.

`dask_scheduler: local` starts a `distributed.LocalCluster` sized to this machine (one
worker process or one thread per core, see `dask_client`) for the length of a stage;
any other value is the address of a running scheduler, e.g.
`tcp://HOST:8786`. The tasks and their order of results are the same either way, so
the outputs are too.
"""

import contextlib
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from imgrec.errors import ImgrecError, first_line

LOCAL = "local"
# Tasks in flight per worker thread: enough to keep every worker busy while results come back
# in order, few enough that the results waiting for their turn stay a bounded memory.
TASKS_PER_WORKER = 2
_CONNECT_TIMEOUT = "10s"
_WORKER_TIMEOUT = 60  # seconds
# No dashboard, and its HTTP server on a free port: 8787 may belong to another cluster.
NO_DASHBOARD = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block ends: a cluster stopped halfway through its
    start is one nobody can close (its processes, and a traceback at exit, outlive us).

    A recording handler, not a blocked mask: a mask holds a signal back from this thread
    only, and Python runs every handler here whichever thread the signal reaches. A signal
    this process ignores (as a shell's background jobs ignore SIGINT) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set, and only run, in the main thread
        return
    pending: list[int] = []
    held = [s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) != signal.SIG_IGN]
    handlers = {signum: signal.signal(signum, lambda s, _: pending.append(s)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if pending:  # now the stage's own handler stops it, with the cluster closable
            signal.raise_signal(pending[0])


@contextlib.contextmanager
def dask_client(scheduler: str, *, processes: bool, tasks: int | None = None) -> Iterator[Any]:
    """A `distributed.Client` of `scheduler`; `local`: a cluster closed on leaving, of one
    single-threaded worker process per core, each allowed an equal share of memory
    (`processes`: for Python-heavy tasks, such as decoding images), or of one thread per
    core in this process (for pyarrow's reading, which releases the GIL and whose results
    then need no copy between processes: measured, 2-3x faster than processes on 2 cores).
    `tasks`, where known, caps the local workers: a small job starts no idle processes."""
    from distributed import Client, LocalCluster

    # The scheduler and workers log their start and stop, and warn of slow shutdowns; a
    # stage's log is its own. A worker that dies still ends in one error (ordered_results).
    # The worker processes log on their own handlers, silenced by `silence_logs`: else a
    # heartbeat that races the cluster's close prints a traceback (dask/distributed#7105).
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler == LOCAL:
        with contextlib.ExitStack() as stack:
            with _signals_held():
                local = stack.enter_context(
                    LocalCluster(
                        n_workers=min(cpu_count(), tasks or cpu_count()) if processes else 1,
                        threads_per_worker=1 if processes else cpu_count(),
                        processes=processes,
                        scheduler_kwargs=NO_DASHBOARD,
                        silence_logs=logging.CRITICAL,
                    )
                )
                # Its worker processes end when this one does, even by SIGKILL: each
                # watches a pipe from its parent and exits when it closes.
                client = stack.enter_context(Client(local))
            yield client
        return
    try:
        client = Client(scheduler, timeout=_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as error:
        raise ImgrecError(
            f"cannot reach the Dask scheduler at param dask_scheduler={scheduler!r}: "
            f"{first_line(error)}; give its address (tcp://HOST:8786) or `local`."
        ) from error
    with client:
        try:  # a scheduler without workers would leave every task waiting
            client.wait_for_workers(1, timeout=_WORKER_TIMEOUT)
        except TimeoutError as error:
            raise ImgrecError(
                f"the Dask scheduler at param dask_scheduler={scheduler!r} has had no worker "
                f"for {_WORKER_TIMEOUT} s; start one (dask worker {scheduler}) and rerun."
            ) from error
        yield client


def ordered_results(
    client: Any | None, function: Callable, tasks: Iterable[tuple]
) -> Iterator[Any]:
    """`function(*task)` for every task as Dask tasks, results in task order.

    At most TASKS_PER_WORKER tasks per worker thread are in flight, so memory stays bounded on
    both sides however many tasks there are. A task's error is raised here, as itself.
    Without a client the tasks run one by one in this process.
    """
    if client is None:
        yield from (function(*task) for task in tasks)
        return
    from distributed import KilledWorker

    workers = client.scheduler_info()["workers"].values()
    window = TASKS_PER_WORKER * max(sum(worker["nthreads"] for worker in workers), 1)
    pending: deque = deque()
    try:
        for task in tasks:
            pending.append(client.submit(function, *task, pure=False))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except KilledWorker as error:
        raise ImgrecError(
            f"every Dask worker that ran one of this stage's {function.__name__} tasks died "
            "(out of memory, or killed); the workers' logs say why."
        ) from error
    finally:
        for future in pending:  # an error or an interrupt: nothing more is wanted
            future.cancel()
