"""Re-ordering and alignment of units across models (DESIGN 2.5).

``align(reference, other, method=...)`` (also ``permsym.align``) with methods ``sort``,
``sorensen``, ``weight`` and ``activation``; stability metrics across many checkpoints live in
:mod:`permsym.alignment.metrics`.
"""

from __future__ import annotations

from permsym.alignment.api import METHODS, align
from permsym.alignment.result import AlignmentResult

__all__ = ["METHODS", "AlignmentResult", "align"]

