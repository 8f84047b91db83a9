"""Errors a user can act on.

Messages follow ``<call>: <what> must be <constraint>; got <value>.`` The CLI turns any
:class:`PermsymError`, :class:`ValueError` or :class:`TypeError` raised by permsym into one
stderr line and exit code 2.
"""

from __future__ import annotations

from typing import Any


class PermsymError(Exception):
    """A domain error: the request is well-typed but cannot be carried out."""


def check_positive_int(call: str, what: str, value: Any) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{call}: {what} must be a positive integer; got {value!r}.")
    return value


def check_probability(call: str, what: str, value: Any, *, open_low: bool = True) -> float:
    """Return ``value`` as a float in (0, 1] (or [0, 1] with ``open_low=False``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{call}: {what} must be a number in (0, 1]; got {value!r}.") from None
    low_ok = v > 0 if open_low else v >= 0
    if not (low_ok and v <= 1):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{call}: {what} must be in {interval}; got {value!r}.")
    return v
