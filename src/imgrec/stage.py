"""What every stage script shares: argument parsing, one-line errors, atomic writes."""

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from imgrec.errors import ImgrecError


class StageParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ImgrecError, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ImgrecError(f"{self.prog}: {message}.")


def param(text: str) -> object:
    """A param as DVC templated it into the command line, parsed back to its YAML type."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(): user errors end in one line on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        main()
    except ImgrecError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written.", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; it becomes `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; it replaces `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write JSON atomically, keys sorted, so reruns produce identical bytes."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> object:
    return json.loads(Path(path).read_text())
