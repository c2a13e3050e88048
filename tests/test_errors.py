"""first_line: one line out of any library's error, whatever its shape."""

import pytest

from imgrec.errors import first_line


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("bad value\nsecond line\nthird"), "bad value"),
        (OSError("\n\n  indented first  \nrest"), "indented first"),
        (KeyError(), "KeyError"),
        (RuntimeError(""), "RuntimeError"),
        ("plain text\nmore", "plain text"),
        ("", ""),
    ],
)
def test_first_line(error, expected):
    assert first_line(error) == expected
