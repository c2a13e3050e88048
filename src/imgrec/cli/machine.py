"""`imgrec machine`: where queries compute, for a bug report."""

import argparse


def add_parser(commands, parents: dict[str, argparse.ArgumentParser]) -> None:
    machine = commands.add_parser(
        "machine",
        help="where queries compute: CPU, kernels in force, threads, versions",
        description="Print the CPU, the kernels torch and BLAS use (portable unless "
        "IMGREC_KERNELS=native), threads and versions: what to paste into a bug report.",
    )
    machine.set_defaults(run=run, images=[])


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: F401 - loaded so the line can say which kernels it uses

    from imgrec.pipeline import kernels

    print(kernels.machine_line())
    return 0
