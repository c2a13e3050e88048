"""Checks for param values: each failure names the param and what it expected."""

from collections.abc import Sequence

from imgrec.errors import ImgrecError


def positive_int(name: str, value: object) -> int:
    # bool is an int subclass; `-S epochs=true` must not mean one epoch.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ImgrecError(f"param {name} must be a positive integer, got {value!r}.")
    return value


def non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImgrecError(f"param {name} must be an integer >= 0, got {value!r}.")
    return value


def positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ImgrecError(f"param {name} must be a positive number, got {value!r}.")
    return float(value)


def open_fraction(name: str, value: object) -> float:
    """A number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ImgrecError(f"param {name} must be a number strictly between 0 and 1, got {value!r}.")
    return float(value)


def closed_fraction(name: str, value: object) -> float:
    """A number from 0 to 1 inclusive."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ImgrecError(f"param {name} must be a number from 0 to 1, got {value!r}.")
    return float(value)


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ImgrecError(f"param {name} must be true or false, got {value!r}.")
    return value


def choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ImgrecError(f"param {name} must be one of {', '.join(choices)}; got {value!r}.")
    return str(value)
