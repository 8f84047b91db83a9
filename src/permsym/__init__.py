"""permsym: permutation symmetry, gradient noise and SGD equilibrium of neural networks.

Public names are imported lazily so that ``import permsym`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "PermsymError": "permsym._errors",
    "align": "permsym.alignment",
    "build": "permsym.archs",
    "save": "permsym.io",
    "load": "permsym.io",
    "infer_structure": "permsym.symmetry",
    "Structure": "permsym.symmetry",
    "random_permutation": "permsym.symmetry",
    "apply_permutation": "permsym.symmetry",
    "count_symmetries": "permsym.symmetry",
    "SymmetryCount": "permsym.symmetry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'permsym' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
