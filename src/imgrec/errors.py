"""The one exception type a user sees: its message is the whole explanation."""


class ImgrecError(Exception):
    """A problem with the user's input, params or environment, stated in one sentence."""


class MissingOutput(ImgrecError):
    """A pipeline output that is not there yet: `dvc repro` makes it (or `dvc pull`)."""
