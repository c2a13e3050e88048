"""Every param check, good and bad values: a bad value's error names the param."""

import inspect
import math

import pytest

from imgrec import params
from imgrec.errors import ImgrecError

GOOD = [
    (params.positive_int, 1, 1),
    (params.positive_int, 40000, 40000),
    (params.non_negative_int, 0, 0),
    (params.non_negative_int, 42, 42),
    (params.positive_float, 0.001, 0.001),
    (params.positive_float, 3, 3.0),
    (params.positive_float, 1e-9, 1e-9),
    (params.open_fraction, 0.2, 0.2),
    (params.open_fraction, 0.999, 0.999),
    (params.closed_fraction, 0, 0.0),
    (params.closed_fraction, 1, 1.0),
    (params.closed_fraction, 0.1, 0.1),
    (params.boolean, True, True),
    (params.boolean, False, False),
]

BAD = [
    (params.positive_int, True),
    (params.positive_int, False),
    (params.positive_int, 0),
    (params.positive_int, -3),
    (params.positive_int, 1.0),
    (params.positive_int, 2.5),
    (params.positive_int, "32"),
    (params.positive_int, "abc"),
    (params.positive_int, None),
    (params.non_negative_int, -1),
    (params.non_negative_int, True),
    (params.non_negative_int, 0.0),
    (params.non_negative_int, "0"),
    (params.non_negative_int, None),
    (params.positive_float, 0),
    (params.positive_float, 0.0),
    (params.positive_float, -0.1),
    (params.positive_float, True),
    (params.positive_float, "0.1"),
    (params.positive_float, math.nan),
    (params.positive_float, None),
    (params.open_fraction, 0),
    (params.open_fraction, 1),
    (params.open_fraction, 1.5),
    (params.open_fraction, -0.2),
    (params.open_fraction, True),
    (params.open_fraction, "0.2"),
    (params.open_fraction, math.nan),
    (params.closed_fraction, -0.01),
    (params.closed_fraction, 1.01),
    (params.closed_fraction, True),
    (params.closed_fraction, False),
    (params.closed_fraction, "0.1"),
    (params.closed_fraction, math.nan),
    (params.boolean, 1),
    (params.boolean, 0),
    (params.boolean, "true"),
    (params.boolean, "yes"),
    (params.boolean, None),
]


def _id(value: object) -> str:
    return getattr(value, "__name__", None) or repr(value)


@pytest.mark.parametrize(("check", "value", "expected"), GOOD, ids=_id)
def test_good_values_pass(check, value, expected):
    result = check("some_param", value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("check", "value"), BAD, ids=_id)
def test_bad_values_raise_naming_the_param(check, value):
    with pytest.raises(ImgrecError) as info:
        check("some_param", value)
    message = str(info.value)
    assert message.startswith("param some_param ")
    assert repr(value) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("value", "choices", "ok"),
    [
        ("exact", ("exact", "faiss"), True),
        ("faiss", ("exact", "faiss"), True),
        ("Exact", ("exact", "faiss"), False),
        ("", ("exact", "faiss"), False),
        (None, ("exact", "faiss"), False),
        (1, ("exact", "faiss"), False),
        ("fp32", ["fp32", "bf16"], True),
    ],
)
def test_choice(value, choices, ok):
    if ok:
        assert params.choice("index", value, choices) == value
    else:
        with pytest.raises(ImgrecError) as info:
            params.choice("index", value, choices)
        assert str(info.value).startswith("param index must be one of ")
        assert ", ".join(choices) in str(info.value)


def test_every_check_is_covered():
    checks = {
        name
        for name, function in inspect.getmembers(params, inspect.isfunction)
        if function.__module__ == params.__name__ and not name.startswith("_")
    }
    tested = {check.__name__ for check, *_ in GOOD + BAD} | {"choice"}
    assert checks == tested
