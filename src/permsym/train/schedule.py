r"""Target temperature schedules $T^*(t)$ and their string grammar.

    SCHEDULE := "constant:T0=" NUM
              | "linear:T0=" NUM ",T_end=" NUM
              | "cosine:T0=" NUM ",T_end=" NUM

With progress $u = t / t_{\max} \in [0, 1]$:

- constant: $T^*(u) = T_0$;
- linear: $T^*(u) = T_0 + (T_{\mathrm{end}} - T_0)\,u$;
- cosine: $T^*(u) = T_{\mathrm{end}} + \tfrac12 (T_0 - T_{\mathrm{end}})(1 + \cos \pi u)$.

$T_{\mathrm{end}}$ is the floor the decay reaches at the last step ($0 < T_{\mathrm{end}} \le T_0$).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from permsym._errors import PermsymError

__all__ = ["SCHEDULE_FORM", "TemperatureSchedule", "parse_schedule"]

SCHEDULE_FORM = "constant:T0=..|linear:T0=..,T_end=..|cosine:T0=..,T_end=.."
_KEYS = {"constant": ("T0",), "linear": ("T0", "T_end"), "cosine": ("T0", "T_end")}


@dataclass(frozen=True)
class TemperatureSchedule:
    r"""A target temperature $T^*(t)$ (see the module docstring for the formulas).

    Examples:
        >>> s = TemperatureSchedule("cosine", T0=1e-3, T_end=1e-5)
        >>> s(0, total_steps=100), round(s(50, total_steps=100), 8), s(100, total_steps=100)
        (0.001, 0.000505, 1e-05)
    """

    kind: str
    T0: float
    T_end: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KEYS:
            raise PermsymError(f"TemperatureSchedule: kind must be one of {', '.join(_KEYS)}; got {self.kind!r}.")
        if not (math.isfinite(self.T0) and self.T0 > 0):
            raise PermsymError(f"TemperatureSchedule: T0 must be a finite number > 0; got {self.T0!r}.")
        if self.kind == "constant":
            if self.T_end is not None:
                raise PermsymError(f"TemperatureSchedule: a constant schedule takes no T_end; got T_end={self.T_end!r}.")
        else:
            if self.T_end is None or not (math.isfinite(self.T_end) and 0 < self.T_end <= self.T0):
                raise PermsymError(
                    f"TemperatureSchedule: T_end must be a number with 0 < T_end <= T0 = {self.T0:g} "
                    f"(a decay to a floor); got {self.T_end!r}."
                )

    def __call__(self, step: int, *, total_steps: int) -> float:
        """$T^*$ at ``step`` of ``total_steps`` (progress clipped to [0, 1])."""
        if self.kind == "constant" or self.T_end is None:
            return self.T0
        u = min(max(step / max(total_steps, 1), 0.0), 1.0)
        if self.kind == "linear":
            return self.T0 + (self.T_end - self.T0) * u
        return self.T_end + 0.5 * (self.T0 - self.T_end) * (1.0 + math.cos(math.pi * u))

    def __str__(self) -> str:
        if self.kind == "constant":
            return f"constant:T0={self.T0:g}"
        return f"{self.kind}:T0={self.T0:g},T_end={self.T_end:g}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "T0": self.T0, "T_end": self.T_end, "text": str(self)}


def parse_schedule(text: str) -> TemperatureSchedule:
    """Parse a schedule string; a bad one raises :class:`PermsymError` naming the bad token.

    Examples:
        >>> parse_schedule("linear:T0=1e-3,T_end=1e-4")
        TemperatureSchedule(kind='linear', T0=0.001, T_end=0.0001)
        >>> parse_schedule("exp:T0=1")
        Traceback (most recent call last):
        ...
        permsym._errors.PermsymError: temperature schedule: unknown kind 'exp' in 'exp:T0=1'; expected constant:T0=..|linear:T0=..,T_end=..|cosine:T0=..,T_end=...
    """
    if not isinstance(text, str):
        raise TypeError(f"temperature schedule must be a string; got {type(text).__name__}.")
    where = f"in {text!r}; expected {SCHEDULE_FORM}."
    kind, colon, body = text.strip().partition(":")
    if kind not in _KEYS:
        raise PermsymError(f"temperature schedule: unknown kind {kind!r} {where}")
    if not colon or not body.strip():
        raise PermsymError(f"temperature schedule: {kind} needs {', '.join(k + '=..' for k in _KEYS[kind])} {where}")
    values: dict[str, float] = {}
    for token in (t.strip() for t in body.split(",")):
        key, eq, value = token.partition("=")
        if key not in _KEYS[kind] or not eq:
            raise PermsymError(f"temperature schedule: bad token {token!r} for {kind} {where}")
        if key in values:
            raise PermsymError(f"temperature schedule: {key} given twice {where}")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise PermsymError(f"temperature schedule: bad token {token!r}: {key} must be a number > 0 {where}")
        values[key] = number
    missing = [k for k in _KEYS[kind] if k not in values]
    if missing:
        raise PermsymError(f"temperature schedule: {kind} is missing {missing[0]}=.. {where}")
    if kind != "constant" and values["T_end"] > values["T0"]:
        raise PermsymError(
            f"temperature schedule: bad token 'T_end={values['T_end']:g}': T_end must be <= T0 = {values['T0']:g} "
            f"(a decay to a floor) {where}"
        )
    return TemperatureSchedule(kind, T0=values["T0"], T_end=values.get("T_end"))
