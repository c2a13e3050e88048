"""The harness every stage script runs in: paths from dvc.yaml, params from params.yaml.

`dvc.yaml` passes paths only; a stage reads the params DVC tracks for it from
params.yaml into its config (the class it hands to `run`), so no value ever goes
through a shell. User errors end in one `error:` line and exit status 1.
"""

import argparse
import ctypes
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from imgrec.config import ComputeConfig, StageConfig
from imgrec.errors import EXIT_FAILED, EXIT_INTERRUPTED, ImgrecError, Stopped
from imgrec.pipeline import kernels

PARAMS_FILE = "params.yaml"  # DVC runs stage commands beside dvc.yaml, where this lives


class StageParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ImgrecError, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ImgrecError(f"{self.prog}: {message}.")


def read_params(path: str | os.PathLike = PARAMS_FILE) -> dict:
    try:
        params = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ImgrecError(f"cannot read {path}: {error}") from error
    if not isinstance(params, dict):
        raise ImgrecError(f"{path} must map param names to values.")
    return params


# The machine's fault, not the code's: one line, no traceback.
_ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _end_with_the_parent() -> None:
    """SIGTERM this stage when the process that started it ends. `dvc repro` killed
    outright (SIGKILL, the OOM killer) cannot stop its stage, nor can torchrun's launcher
    its ranks, which it starts in sessions of their own: an orphan would work on behind
    DVC's back and race the rerun. SIGTERM, not SIGKILL, so training saves its state first
    (the setting outlives the kernels' restart: execve keeps it)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_RESTARTED = "IMGREC_RESTARTED"  # set in a restarted stage, so it never restarts twice


def _restart_with_kernels(mode: str) -> None:
    """Start this stage again with `mode` in force: the libraries choose kernels at load."""
    sys.stdout.flush()
    sys.stderr.flush()
    # Caps set for portable, lifted for native, before anything loads; the interpreter's
    # own flags (sys.orig_argv) carry over.
    env = kernels.environment_for(mode) | {_RESTARTED: "1"}
    os.execve(sys.executable, sys.orig_argv, env)


def run(
    main: Callable[[argparse.Namespace, Any], None],
    config_type: type[StageConfig],
    paths: Sequence[str],
    *,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse `--PATH` arguments, build the stage's config, print the machine, run `main`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    # SIGTERM unwinds like Ctrl-C: atomic writes drop their temp files, pools end workers.
    signal.signal(signal.SIGTERM, _interrupt)
    _end_with_the_parent()
    name = Path(sys.argv[0]).stem
    try:
        parser = StageParser(prog=f"stages/{name}.py", description=sys.modules["__main__"].__doc__)
        for path in paths:
            parser.add_argument(f"--{path.replace('_', '-')}", required=True, metavar="PATH")
        if options is not None:
            options(parser)
        args = parser.parse_args()
        config = config_type.from_params(read_params())
        wanted = getattr(config, "kernels", kernels.active())
        if not kernels.applies_here():
            kernels.apply(wanted)  # nothing to cap: record the mode and go on
        elif wanted != kernels.active() or not kernels.portable_in_force():
            # A mode change, or numpy loaded before imgrec could cap OpenBLAS (a stage script
            # importing a library first): either way, the kernels need a fresh process.
            if os.environ.get(_RESTARTED):
                kernels.check_portable()  # one sentence on what is wrong
            else:
                _restart_with_kernels(wanted)
        if hasattr(config, "num_threads"):  # the param, never the environment's count
            kernels.pin_threads(config.num_threads)
        if not isinstance(config, ComputeConfig):  # those print it in `runtime.start`
            print(kernels.machine_line())
        main(args, config)
    except ImgrecError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except OSError as error:
        if error.errno not in _ENVIRONMENT_ERRORS:
            raise  # a bug: keep the traceback
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror}{where}; dvc repro reruns this stage.", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except Stopped as stop:
        print(f"{name}: {stop}; rerun the same command (`dvc repro`) to resume.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt as interrupt:
        stopped = str(interrupt) or "interrupted"
        print(f"error: {stopped}; dvc repro reruns this stage.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
