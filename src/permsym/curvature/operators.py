"""Solvers accept a matrix or a matvec: one code path for dense references and HVPs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["as_matvec", "working_device", "working_dtype"]

Matvec = Callable[[torch.Tensor], torch.Tensor]


def as_matvec(A: Any, *, size: int | None = None, dtype: torch.dtype = torch.float64) -> tuple[Matvec, int]:
    """Return ``(matvec, n)`` for a square matrix, a :class:`HessianOperator` or a callable.

    A bare callable needs ``size``; the matvec returns vectors of ``dtype`` (products are
    computed in the operator's own dtype).
    """
    if isinstance(A, torch.Tensor):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"as_matvec: matrix must be square; got shape {tuple(A.shape)}.")
        M = A
        return (lambda v: (M @ v.to(device=M.device, dtype=M.dtype)).to(dtype)), int(A.shape[0])
    if callable(A):
        n = size if size is not None else getattr(A, "shape", (None,))[0]
        if n is None:
            raise ValueError("as_matvec: a matvec callable needs size=P (or a .shape attribute).")
        return (lambda v: A(v).to(dtype)), int(n)
    raise TypeError(f"as_matvec: A must be a square tensor or a matvec callable; got {type(A).__name__}.")


def working_device(A: Any, device: torch.device | str | None = None) -> torch.device:
    """Where a solver keeps its vectors: ``device`` if given, else ``A.device`` (a matrix's, or a
    :class:`~permsym.curvature.hvp.HessianOperator`'s: its model's), else the CPU.

    Random vectors are drawn on the CPU (with the caller's seeded generator) and then moved
    here, so a seed gives the same numbers on every device.

    Examples:
        >>> working_device(torch.eye(2)), working_device(lambda v: v, "cpu")
        (device(type='cpu'), device(type='cpu'))
    """
    if device is not None:
        return torch.device(device)
    dev = getattr(A, "device", None)
    return dev if isinstance(dev, torch.device) else torch.device("cpu")


def working_dtype(A: Any) -> torch.dtype:
    """float32 for operators whose products are float32 or narrower, else float64.

    Solvers keep their vectors in this dtype: a basis more precise than the products it holds
    buys no accuracy and doubles the memory traffic of reorthogonalisation.
    """
    dt = getattr(A, "dtype", torch.float64)
    return torch.float32 if isinstance(dt, torch.dtype) and dt.is_floating_point and dt.itemsize < 8 else torch.float64
