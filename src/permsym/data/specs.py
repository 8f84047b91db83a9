"""Data-spec strings -> parsed specs.

    SPEC := NAME [":" BODY]
    synthetic-regression:n=512,d=8,noise=0.1,seed=0
    teacher:ARCH,n=512,noise=0.1,seed=0     (ARCH has commas: the keys are taken from the right)
    linear:n=1024,d=8,noise=0.5,seed=0
    digits[:n=500,seed=0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from permsym._errors import PermsymError

__all__ = ["KINDS", "DataSpec", "parse_spec", "task_of"]


def _count(token: str) -> int:
    value = int(token)
    if value <= 0:
        raise ValueError
    return value


def _seed(token: str) -> int:
    value = int(token)
    if value < 0:
        raise ValueError
    return value


def _noise(token: str) -> float:
    value = float(token)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError
    return value


_FORMS = {_count: "a positive integer", _seed: "a non-negative integer", _noise: "a number >= 0"}

# kind -> (task, {key: (parser, default)})
KINDS: dict[str, tuple[str, dict[str, tuple[Any, Any]]]] = {
    "synthetic-regression": (
        "regression",
        {"n": (_count, 512), "d": (_count, 8), "noise": (_noise, 0.1), "seed": (_seed, 0)},
    ),
    "teacher": ("regression", {"n": (_count, 512), "noise": (_noise, 0.1), "seed": (_seed, 0)}),
    "linear": (
        "regression",
        {"n": (_count, 1024), "d": (_count, 8), "noise": (_noise, 0.5), "seed": (_seed, 0)},
    ),
    "digits": ("classification", {"n": (_count, None), "seed": (_seed, 0)}),
}


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: its kind, options (defaults filled in) and, for teacher, the arch."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    arch: str | None = None
    text: str = ""

    @property
    def task(self) -> str:
        """``"regression"`` or ``"classification"``."""
        return KINDS[self.kind][0]


def parse_spec(spec: str) -> DataSpec:
    """Parse a data spec string; raise :class:`PermsymError` naming the bad part.

    Examples:
        >>> parse_spec("teacher:mlp:8-32-1,act=tanh,n=64,seed=3").arch
        'mlp:8-32-1,act=tanh'
        >>> parse_spec("digits").task
        'classification'
    """
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a string; got {type(spec).__name__}.")
    name, _, body = spec.strip().partition(":")
    if name not in KINDS:
        raise PermsymError(
            f"data: unknown data spec {spec!r}; expected one of {', '.join(KINDS)} "
            f"(e.g. 'linear:n=1024,d=8' or 'digits')."
        )
    keys = KINDS[name][1]
    tokens = [t.strip() for t in body.split(",")] if body.strip() else []
    arch = None
    if name == "teacher":
        # Take the known trailing key=value tokens from the right; the rest is the arch.
        split = len(tokens)
        while split > 0 and tokens[split - 1].partition("=")[0] in keys and "=" in tokens[split - 1]:
            split -= 1
        arch = ",".join(tokens[:split])
        tokens = tokens[split:]
        if not arch:
            raise PermsymError(
                f"data: teacher needs an architecture before its options; got {spec!r} "
                f"(e.g. 'teacher:mlp:8-32-1,n=512,noise=0.1,seed=0')."
            )
    options = {key: default for key, (_, default) in keys.items()}
    for token in tokens:
        key, eq, value = token.partition("=")
        if key not in keys or not eq:
            raise PermsymError(
                f"data: option {token!r} of {name!r} must be one of {', '.join(k + '=..' for k in keys)}; "
                f"got {spec!r}."
            )
        parser = keys[key][0]
        try:
            options[key] = parser(value)
        except ValueError:
            raise PermsymError(
                f"data: {name} option {key} must be {_FORMS[parser]}; got {value!r}."
            ) from None
    return DataSpec(kind=name, options=options, arch=arch, text=spec.strip())


def task_of(spec: str) -> str:
    """The task a spec describes: ``"regression"`` (mse) or ``"classification"`` (cross-entropy)."""
    return parse_spec(spec).task
