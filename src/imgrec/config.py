"""The machinery of stage configs: frozen dataclasses that validate themselves.

Each stage's config lives in its stage's module (`fetch.FetchConfig`,
`train.TrainConfig`, ...), so a new hyperparameter changes only the modules its
own stage depends on. A hyperparameter lives in params.yaml, in its stage's
`params:` list in dvc.yaml, and as one field of that config (a test keeps the
three in step). Stages read params.yaml themselves (`stage.run`): no param
travels through a shell command line.
"""

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Self

from imgrec.errors import ImgrecError


def param(default: Any, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None) -> Any:  # fmt: skip
    """A field with its default and its allowed range (inclusive ge/le, exclusive gt/lt)."""
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    return field(default=default, metadata={k: v for k, v in bounds.items() if v is not None})


_BOUND_TEXT = {"ge": ">= {}", "gt": "> {}", "le": "<= {}", "lt": "< {}"}
_BOUND_OK = {
    "ge": lambda v, b: v >= b,
    "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b,
    "lt": lambda v, b: v < b,
}


def _typed(name: str, value: object, kind: Any) -> object:
    """`value` as the field's type, or one ImgrecError naming the param."""
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ImgrecError(f"param {name} must be one of {', '.join(choices)}; got {value!r}.")
        return value
    # bool is an int subclass: `-S epochs=true` must not mean one epoch.
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        # DVC writes small floats as `1e-05`, which YAML 1.1 (PyYAML) reads as a string.
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    if kind in (bool, str) and isinstance(value, kind):
        return value
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    raise ImgrecError(f"param {name} must be {expected[kind]}, got {value!r}.")


@dataclass(frozen=True)
class StageConfig:
    """Validates every field on construction; `from_params` picks the stage's own params."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for spec in fields(self):
            value = _typed(spec.name, getattr(self, spec.name), hints[spec.name])
            broken = [
                _BOUND_TEXT[key].format(bound)
                for key, bound in spec.metadata.items()
                if not _BOUND_OK[key](value, bound)
            ]
            if broken:
                rule = " and ".join(broken)
                raise ImgrecError(f"param {spec.name} must be {rule}, got {value!r}.")
            object.__setattr__(self, spec.name, value)

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Self:
        missing = [spec.name for spec in fields(cls) if spec.name not in params]
        if missing:
            raise ImgrecError(f"params.yaml has no {', '.join(missing)}; add it and rerun.")
        return cls(**{spec.name: params[spec.name] for spec in fields(cls)})


@dataclass(frozen=True)
class ComputeConfig(StageConfig):
    """Where and how a stage computes: these change the float bits of what it writes."""

    device: str = "auto"
    num_threads: int = param(2, ge=1)
    kernels: Literal["portable", "native"] = "portable"
