"""The query command: recommend catalog items for any image, or classify it, with the trained model.

    imgrec recommend PATH_OR_URL... [--top-k 5] [--out fig.png] [--json]
    imgrec classify PATH_OR_URL... [--json]
    imgrec serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--token T | --no-token]
    imgrec review suggestions | accept ROW... | relabel ROW LABEL | drop ROW... | ...

Only the command line: every answer comes from `query.Recommender`, the API the
server (`imgrec.server`, which `serve` starts) calls too, which runs the pipeline's
own code (prepare's decoder, embed's vectors, recommend's exact search), so a
catalog image given as a query finds itself first with score 1.0.

Every failure is one `error:` line on stderr, never a traceback (IMGREC_DEBUG=1
shows a bug's). In a batch, a query that cannot be read or decoded is skipped
with one `warning:` line and the others are answered; `--json` keeps one entry
per query in the order given, a skipped one as {"query" (or "image"): ...,
"error": why}, so entries line up with the arguments. Exit status: 0 when every
query was answered; 1 when any failed or `--out` could not be written (the
results are printed first); 141 when the reader of stdout left early (`| head`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from imgrec.cli import classify, machine, recommend, review, serve
from imgrec.cli.common import outputs_parent, queries_parent
from imgrec.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ImgrecError,
    MissingOutput,
    first_line,
)
from imgrec.serving.query import (
    DEFAULT_AUDIT,
    DEFAULT_CATALOG,
    DEFAULT_CATALOG_MAP,
    DEFAULT_CORRECTIONS,
    DEFAULT_HASHES,
    DEFAULT_MODEL,
    DEFAULT_PREPARED,
    DEFAULT_RECOMMENDATIONS,
    describe,
    find_repo_root,
    has_dvc_remote,
)

# torch, fsspec, scikit-learn and matplotlib load inside the commands that need them,
# so `--help` and argument errors answer at once instead of after seconds of imports.

# The subcommands, in the order `--help` lists them: each module's `add_parser(commands,
# parents)` declares its arguments and sets `run`. A new subcommand is one more entry.
COMMANDS = (recommend, classify, serve, review, machine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgrec",
        description="Query the trained model: similar catalog items for any image, or its class.",
        epilog="Relative default paths are taken from the repository root (the nearest folder "
        "above the current one that holds dvc.yaml). Produce them with `dvc repro`, or `dvc pull` "
        "them where the project has a DVC remote.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Shared option sets, as argparse parents: "outputs" (what every command but `machine`
    # loads), "queries" (the outputs and the images to answer for).
    parents = {"outputs": outputs_parent(), "queries": queries_parent()}
    for command in COMMANDS:
        command.add_parser(commands, parents)
    return parser


def resolve_defaults(args: argparse.Namespace, root: Path) -> None:
    """Unset paths become the pipeline's outputs under `root`; given paths stay as typed.
    The audit's report and the image hashes describe the pipeline's catalog, so they
    default to its outputs only when the catalog does too (else: none, no collapsing)."""
    defaults = [
        ("model", DEFAULT_MODEL),
        ("catalog", DEFAULT_CATALOG),
        ("prepared", DEFAULT_PREPARED),
        ("recommendations", DEFAULT_RECOMMENDATIONS),
    ]
    if getattr(args, "catalog", None) is None:
        defaults += [("audit", DEFAULT_AUDIT), ("hashes", DEFAULT_HASHES)]
        if "map" in vars(args):  # serve's
            defaults.append(("map", DEFAULT_CATALOG_MAP))
    if "corrections" in vars(args):
        defaults.append(("corrections", DEFAULT_CORRECTIONS))
    for name, default in defaults:
        if getattr(args, name, None) is None:
            setattr(args, name, root / default)


def _quiet_stdout() -> None:
    """Point stdout at devnull, as Python's docs advise, so the exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout with no file behind it (tests) has nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_defaults(args, find_repo_root())
    # Stdout carries the results (maybe JSON); anything a library logs goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader that left early shows here when the output fit the buffer
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except MissingOutput as error:
        pull = " Or `dvc pull` it: this project has a DVC remote." if has_dvc_remote() else ""
        print(f"error: {first_line(error)}{pull}", file=sys.stderr)
        return EXIT_FAILED
    except ImgrecError as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:  # the machine's, not the input's: disk full, permissions, ...
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {describe(error)}{where}.", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get("IMGREC_DEBUG"):
            raise
        print(
            f"error: unexpected {type(error).__name__}: {first_line(error)} "
            "(a bug: rerun with IMGREC_DEBUG=1 for the traceback and report it).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return code
