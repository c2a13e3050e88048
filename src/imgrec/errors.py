"""The one exception type a user sees: its message is the whole explanation."""


class ImgrecError(Exception):
    """A problem with the user's input, params or environment, stated in one sentence."""
