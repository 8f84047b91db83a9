"""The architecture-string grammar, in one parser.

    ARCH    := FAMILY ":" DIMS ("," KEY "=" VALUE)*
    DIMS    := SHAPE ("-" INT)+          e.g. 784-1024-1024-10 or 1x8x8-16-32-10
    SHAPE   := INT ("x" INT)*

Each family declares its option keys with a parser and a default; everything else is an
error naming the bad token and the accepted form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from permsym._errors import PermsymError


@dataclass(frozen=True)
class Option:
    """One ``key=value`` option of a family: parser, default and the accepted form."""

    parse: Callable[[str], Any]
    default: Any
    form: str


@dataclass(frozen=True)
class ArchSpec:
    """A parsed architecture string."""

    family: str
    dims: tuple[tuple[int, ...], ...]  # first entry may be a multi-axis shape (CxHxW)
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def stream_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for one purpose ("weights", "masks", ...) from a user seed.

    Two generators seeded with the same integer produce the same stream: masks drawn as
    ``rand < density`` and weights drawn as ``2 rand - 1`` from equal seeds would be perfectly
    correlated (every kept weight negative). numpy's SeedSequence decorrelates them.
    """
    import numpy as np

    tag = int.from_bytes(purpose.encode()[:8].ljust(8, b"\0"), "little")
    return int(np.random.SeedSequence([int(seed), tag]).generate_state(1, dtype=np.uint64)[0] >> 1)


def parse_int(token: str) -> int:
    value = int(token)
    if value <= 0:
        raise ValueError
    return value


def parse_nonneg_int(token: str) -> int:
    value = int(token)
    if value < 0:
        raise ValueError
    return value


def parse_bool(token: str) -> bool:
    lowered = token.lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ValueError


def parse_density(token: str) -> float:
    value = float(token)
    if not 0.0 < value <= 1.0:
        raise ValueError
    return value


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(token: str) -> str:
        if token not in choices:
            raise ValueError
        return token

    return parse


def parse_arch(text: str, families: dict[str, dict[str, Option]]) -> ArchSpec:
    """Split ``text`` into family, dims and typed options.

    Raises:
        PermsymError: naming the bad token and the accepted form.
    """
    if not isinstance(text, str):
        raise TypeError(f"build: arch must be a string like 'mlp:784-256-10'; got {type(text).__name__}.")
    family, sep, body = text.strip().partition(":")
    if family not in families:
        raise PermsymError(
            f"unknown architecture {family!r} in {text!r}; expected one of "
            f"{', '.join(sorted(families))} (e.g. 'mlp:784-256-10')."
        )
    if not sep or not body:
        raise PermsymError(f"architecture {text!r} has no dimensions; expected {family}:IN-...-OUT.")
    dims_token, *option_tokens = body.split(",")
    dims: list[tuple[int, ...]] = []
    for part in dims_token.split("-"):
        try:
            dims.append(tuple(parse_int(p) for p in part.split("x")))
        except ValueError:
            raise PermsymError(
                f"bad dimension {part!r} in {text!r}; expected positive integers joined by '-' "
                f"(an input shape may be CxHxW)."
            ) from None
    if len(dims) < 2:
        raise PermsymError(f"architecture {text!r} needs at least an input and an output size.")
    schema = families[family]
    options = {key: opt.default for key, opt in schema.items()}
    for token in option_tokens:
        key, eq, value = token.partition("=")
        key = key.strip()
        if key not in schema or not eq:
            accepted = ", ".join(f"{k}={o.form}" for k, o in schema.items()) or "none"
            raise PermsymError(f"unknown option {token!r} in {text!r}; {family} accepts {accepted}.")
        try:
            options[key] = schema[key].parse(value.strip())
        except ValueError:
            raise PermsymError(
                f"bad value {value!r} for {key} in {text!r}; expected {key}={schema[key].form}."
            ) from None
    return ArchSpec(family=family, dims=tuple(dims), options=options, text=text.strip())
