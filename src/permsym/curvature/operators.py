"""Solvers accept a matrix or a matvec: one code path for dense references and HVPs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["as_matvec"]

Matvec = Callable[[torch.Tensor], torch.Tensor]


def as_matvec(A: Any, *, size: int | None = None) -> tuple[Matvec, int]:
    """Return ``(matvec, n)`` for a square matrix, a :class:`HessianOperator` or a callable.

    A bare callable needs ``size``; the matvec takes and returns float64 vectors (products are
    computed in the operator's own dtype).
    """
    if isinstance(A, torch.Tensor):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"as_matvec: matrix must be square; got shape {tuple(A.shape)}.")
        M = A
        return (lambda v: (M @ v.to(M.dtype)).to(torch.float64)), int(A.shape[0])
    if callable(A):
        n = size if size is not None else getattr(A, "shape", (None,))[0]
        if n is None:
            raise ValueError("as_matvec: a matvec callable needs size=P (or a .shape attribute).")
        return (lambda v: A(v).to(torch.float64)), int(n)
    raise TypeError(f"as_matvec: A must be a square tensor or a matvec callable; got {type(A).__name__}.")
