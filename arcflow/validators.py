"""The value checks every config class uses, each written once.

A check is an attrs validator that also says, in words, what a valid value
is (``expected``), and can test a bare value (``accepts``), so that the
settings layer reports a bad flag, variable or file key with the same words
as a bad ``RuntimeConfig(...)`` argument, without parsing messages::

    concurrency: int = attrs.field(default=8, validator=whole(1, 100_000))

    RuntimeConfig(concurrency=0)
    # ConfigError: invalid concurrency=0: must be a whole number between 1 and 100000
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from .errors import ConfigError

__all__ = [
    "Check",
    "fraction",
    "is_number",
    "non_negative",
    "optional",
    "port",
    "positive",
    "whole",
]


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@attrs.frozen
class Check:
    """An attrs validator that knows what it expects.

    ``accepts(value)`` tests a value; ``expected`` is the phrase that ends
    the error message (``must be a number > 0``).  Called by attrs, it raises
    :class:`ConfigError` ``invalid NAME=VALUE: EXPECTED``.
    """

    accepts: Callable[[Any], bool]
    expected: str

    def __call__(self, _instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not self.accepts(value):
            raise ConfigError(f"invalid {attribute.name}={value!r}: {self.expected}")


def whole(lo: int, hi: int | None = None) -> Check:
    """A whole number ``>= lo`` (and ``<= hi`` when given)."""
    bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
    return Check(
        lambda v: _is_whole(v) and v >= lo and (hi is None or v <= hi),
        f"must be a whole number {bound}",
    )


#: A finite number > 0.
positive = Check(lambda v: is_number(v) and v > 0, "must be a number > 0")

#: A finite number >= 0.
non_negative = Check(lambda v: is_number(v) and v >= 0, "must be a number >= 0")

#: A number strictly between 0 and 1.
fraction = Check(
    lambda v: is_number(v) and 0 < v < 1, "must be a number between 0 and 1 (exclusive)"
)

#: A TCP port, 0 meaning any free one.
port = Check(
    lambda v: _is_whole(v) and 0 <= v <= 65535,
    "must be a TCP port between 0 and 65535 (0: any free port)",
)


def optional(check: Check) -> Check:
    """``check``, or None."""
    return Check(lambda v: v is None or check.accepts(v), check.expected)
