"""Activation names accepted by ``act=`` -> modules.

Plain activations are listed here; ortho-polynomial ones (``legendre8``,
``hermite6:per_unit``) are resolved by :mod:`permsym.layers.orthopoly` when it is present.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from permsym._errors import PermsymError

PLAIN: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}

_POLY = re.compile(r"^(?P<family>[a-z_0-9]+?)(?P<degree>\d+)(?::(?P<mode>per_unit|shared))?$")


def parse_activation(token: str) -> str:
    """Validate an ``act=`` value; the module is made later by :func:`make_activation`."""
    if token in PLAIN:
        return token
    match = _POLY.match(token)
    if match:
        from permsym.layers import orthopoly_families

        if match["family"] in orthopoly_families():
            return token
    raise ValueError


def activation_form() -> str:
    """The accepted form of ``act=`` for error messages."""
    return "|".join(PLAIN) + "|<poly family><degree>[:per_unit]"


def make_activation(token: str, num_units: int) -> nn.Module:
    """Build the activation module for a layer of ``num_units`` units."""
    if token in PLAIN:
        return PLAIN[token]()
    match = _POLY.match(token)
    if match is None:
        raise PermsymError(f"unknown activation {token!r}; expected {activation_form()}.")
    from permsym.layers import OrthoPoly

    per_unit = match["mode"] == "per_unit"
    return OrthoPoly(
        match["family"], int(match["degree"]), num_units=num_units if per_unit else None
    )
