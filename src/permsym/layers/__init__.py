"""Symmetry-breaking and remedy layers: masks, ortho-polynomial activations, modular nets."""

from __future__ import annotations

import importlib
from typing import Any

from permsym.layers.masked_linear import MaskedLinear
from permsym.layers.masks import distinct_mask

__all__ = ["MaskedLinear", "OrthoPoly", "distinct_mask", "orthopoly_families", "poly_basis"]

_LAZY = {"OrthoPoly": "permsym.layers.orthopoly", "poly_basis": "permsym.layers.orthopoly"}


def orthopoly_families() -> frozenset[str]:
    """Names of the ortho-polynomial families usable in ``act=<family><degree>``."""
    from permsym.layers.orthopoly import FAMILIES

    return frozenset(FAMILIES)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'permsym.layers' has no attribute {name!r}")
