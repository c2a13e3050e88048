"""The one exception type a user sees: its message is the whole explanation."""

# Exit statuses, one table for every entry point: the stage scripts, the query command and
# the reproduction check.
EXIT_FAILED = 1  # a user error (input, params, environment) or a failed check
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C, or SIGTERM, which stages take as Ctrl-C
# 128 + SIGPIPE: what the shell reports for a tool SIGPIPE ended (`seq 1e6 | head -1` under
# `set -o pipefail`), so a script can tell "the reader left early" from a failure (1);
# Python's docs suggest 1, which would blur the two.
EXIT_BROKEN_PIPE = 141


class ImgrecError(Exception):
    """A problem with the user's input, params or environment, stated in one sentence."""


class MissingOutput(ImgrecError):
    """A pipeline output that is not there yet: `dvc repro` makes it (or `dvc pull`)."""


class Stopped(KeyboardInterrupt):
    """A stage that stopped on request at a point it can resume from; says where."""


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's text (its type's name if it has none):
    some libraries' messages run to a paragraph, and ours stay one line."""
    text = str(error)
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line or (type(error).__name__ if isinstance(error, BaseException) else "")
