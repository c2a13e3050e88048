"""Which CPU kernels the math libraries pick: portable (same bits on any x86-64) or native.

torch (ATen), oneDNN, MKL and OpenBLAS each choose their kernels for the CPU
they run on, so an AVX-512 machine computes other float bits than an AVX2 one
and training diverges to another early-stopping epoch. `portable` caps torch,
oneDNN and OpenBLAS at AVX2, the kernels every x86-64 machine from 2015 on has,
and pins MKL to the branch it gives the same bits with on Intel and AMD CPUs:
the committed results then come back bit for bit on any of them. `native`
leaves each library its own choice (AVX-512, AMX, bf16 where present): faster,
but the bits follow the CPU.

The libraries read these variables when they load or first run (OpenBLAS when
numpy loads), so `imgrec/__init__.py` applies the mode before anything imports
numpy or torch; a stage whose `kernels` param differs restarts itself in the
other mode (see `stage.run`). Nothing here imports numpy or torch at the top.
"""

import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

MODES = ("portable", "native")
# Child processes (prepare's workers, a restarted stage) inherit the mode through this.
MODE_VARIABLE = "IMGREC_KERNELS"
PORTABLE_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised ops
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # convolutions, through oneDNN
    # torch's matrix products, through MKL. MKL picks its code path by vendor as well as by
    # ISA: capped at AVX2, an Intel Xeon trained differently from AMD EPYCs from the first
    # epoch. COMPATIBLE (SSE2, no approximate reciprocals) is the one branch MKL documents
    # as giving the same bits on Intel and AMD CPUs.
    "MKL_CBWR": "COMPATIBLE",
    # numpy's matrix products (OpenBLAS). The committed results were made with its Zen
    # kernels; they are AVX2 kernels, so any AVX2 CPU runs them, Intel's included.
    "OPENBLAS_CORETYPE": "ZEN",
}
# The environment before `apply_from_environment` changed it: a restarted stage starts
# from it, so portable's caps never hide the user's own settings from native.
_ENVIRONMENT_AT_START: dict[str, str] = {}
_ISA_FLAGS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
# What threadpoolctl calls OpenBLAS's AVX2 kernels once OPENBLAS_CORETYPE=ZEN is in force.
_PORTABLE_OPENBLAS = {"haswell", "zen"}


def applies_here() -> bool:
    """The caps name x86-64 instruction sets and need AVX2: elsewhere there is nothing to cap
    (ARM) or nothing to cap to (an x86-64 CPU without AVX2 would crash on Zen kernels)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags()
    return not flags or "avx2" in flags  # no /proc/cpuinfo to read: trust the caps


def environment_for(mode: str, environment: dict[str, str] | None = None) -> dict[str, str]:
    """`environment` (default: the one this process started with) with `mode` applied:
    portable sets the caps; native lifts them (a value equal to portable's is taken as
    portable's, inherited say from a parent process) and leaves any other value, the
    user's own, alone."""
    if mode not in MODES:
        raise ValueError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
    if environment is None:
        environment = _ENVIRONMENT_AT_START or os.environ
    environment = dict(environment)
    environment[MODE_VARIABLE] = mode
    if applies_here():
        for name, value in PORTABLE_ENVIRONMENT.items():
            if mode == "portable":
                environment[name] = value
            elif environment.get(name) == value:
                del environment[name]
    return environment


def apply(mode: str) -> None:
    """Set this process's environment for `mode`; only libraries not yet loaded see it."""
    wanted = environment_for(mode, os.environ)
    for name in (MODE_VARIABLE, *PORTABLE_ENVIRONMENT):
        if name in wanted:
            os.environ[name] = wanted[name]
        else:
            os.environ.pop(name, None)


def apply_from_environment() -> None:
    """Apply IMGREC_KERNELS (default portable); called once, when `imgrec` is imported."""
    _ENVIRONMENT_AT_START.update(os.environ)
    mode = os.environ.get(MODE_VARIABLE, "portable")
    if mode not in MODES:
        log.warning("%s=%r is not one of %s; using portable", MODE_VARIABLE, mode, MODES)
        mode = "portable"
    apply(mode)


def active() -> str:
    return os.environ.get(MODE_VARIABLE, "portable")


# What the thread pools of OpenMP, OpenBLAS and MKL read when they load (OpenBLAS also reads
# OMP_NUM_THREADS): a user's OMP_NUM_THREADS=1, or a 16-core default, must not reach them.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_threads(count: int) -> None:
    """Every math library's thread pool at `count`, whatever the environment or the core
    count says: a BLAS product splits its sums by thread, so the count changes bits (with
    OMP_NUM_THREADS=1 the tiny pipeline's catalog_map and recommend wrote other bytes). The
    pools loaded now are set through threadpoolctl and torch; those that load later (FAISS's
    own OpenBLAS) read the variables."""
    from threadpoolctl import threadpool_limits

    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    threadpool_limits(limits=count)  # applied now, for the process's life
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)


def _blas_threads() -> str:
    from threadpoolctl import threadpool_info

    counts = {str(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}
    return "/".join(sorted(counts)) or "?"


def in_force() -> dict[str, str]:
    """What the loaded libraries really use; a stage that never loads torch is not made to."""
    import numpy as np
    from threadpoolctl import threadpool_info

    torch = sys.modules.get("torch")
    blas = sorted(
        {
            f"{i['internal_api']} {i.get('architecture') or '?'}"
            for i in threadpool_info()
            if i["user_api"] == "blas"
        }
    )
    return {
        "torch_isa": torch.backends.cpu.get_cpu_capability() if torch else "not loaded",
        "blas": ", ".join(blas) or "none",
        "threads": str(torch.get_num_threads()) if torch else _blas_threads(),
        "torch": torch.__version__ if torch else "not loaded",
        "numpy": np.__version__,
    }


def portable_in_force() -> bool:
    """False if portable kernels were asked for but a library loaded before they were set
    (numpy's OpenBLAS picks its kernels when numpy loads; torch's ISA on its first op)."""
    if active() != "portable" or not applies_here():
        return True
    from threadpoolctl import threadpool_info

    torch = sys.modules.get("torch")
    if torch is not None and torch.backends.cpu.get_cpu_capability() != "AVX2":
        return False
    return all(
        (info.get("architecture") or "").lower() in _PORTABLE_OPENBLAS
        for info in threadpool_info()
        if info["internal_api"] == "openblas"
    )


def check_portable() -> None:
    """Raise if portable kernels were asked for but are not in force (see portable_in_force)."""
    if not portable_in_force():
        from imgrec.errors import ImgrecError

        state = in_force()
        raise ImgrecError(
            f"portable kernels are not in force (torch uses {state['torch_isa']}, "
            f"BLAS: {state['blas']}): numpy or torch was loaded before imgrec; import imgrec first."
        )


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", set()) where there is none."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, flags


def cpu_flags() -> set[str]:
    return _cpuinfo()[1]


def cpu() -> str:
    """The CPU's model and the widest vector instructions it offers."""
    model, flags = _cpuinfo()
    model = model or platform.processor() or platform.machine()
    widest = next((name for flag, name in _ISA_FLAGS if flag in flags), None)
    return f"{model} ({platform.machine()}{', ' + widest if widest else ''})"


def machine_line() -> str:
    """One console line on where and how this process computes (never for tracked files)."""
    state = in_force()
    torch = (
        "not loaded" if state["torch"] == "not loaded" else f"{state['torch']} {state['torch_isa']}"
    )
    return (
        f"machine: {cpu()}; kernels {active()}: torch {torch}, {state['blas']}; "
        f"{state['threads']} threads; numpy {state['numpy']}, Python {sys.version.split()[0]}"
    )
