"""Lazy imports of the anchor libraries the benchmarks compare against (shared by the scripts)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


class Skip(Exception):
    """A contender that cannot run here (its package is missing)."""


def anchor(module: str, names: Mapping[str, str]) -> Any:
    """Import ``module``; raise :class:`Skip` naming its package (``names``) when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"{names.get(module, module)} not installed ({exc})") from None
