r"""Hessian-vector products $v \mapsto H v$ with torch.func, summed over data chunks.

Three ways (all exact, differing in cost):

- ``"linearize"``: ``torch.func.linearize`` of the gradient at $\theta$, built once per chunk
  and reused for every product (forward-mode through a cached graph; fastest when reused,
  memory grows with the data held in the cache).
- ``"fwdrev"``: ``jvp(grad(f))`` recomputed per product (forward-over-reverse; memory bounded
  by one chunk).
- ``"revrev"``: ``vjp`` of ``grad(f)`` built once per chunk and reused (reverse-over-reverse).

Measured on a 2-core CPU (MLP 64-256-256-10, 2048 samples): linearize 13 ms, jvp(grad) 27 ms
per product; see benchmarks/bench_curvature.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.func import grad, jvp, linearize, vjp

from permsym.curvature.functional import FlatLoss

__all__ = ["METHODS", "HessianOperator"]

METHODS = ("linearize", "fwdrev", "revrev")


class HessianOperator:
    """The Hessian of a :class:`FlatLoss` at its ``theta`` as a matvec (counts its calls).

    Attributes:
        shape: ``(P, P)``.
        dtype: dtype of the products.
        num_matvecs: products computed so far.
    """

    def __init__(self, flat: FlatLoss, *, method: str = "linearize") -> None:
        if method not in METHODS:
            raise ValueError(f"HessianOperator: method must be one of {', '.join(METHODS)}; got {method!r}.")
        self.flat = flat
        self.method = method
        self.shape = (flat.num_params, flat.num_params)
        self.dtype = flat.dtype
        self.num_matvecs = 0
        theta = flat.theta
        self._parts: list[tuple[Callable[[torch.Tensor], torch.Tensor], float]] = []
        for X, y, w in flat.chunks:
            g = grad(flat.chunk_fn(X, y))
            if method == "linearize":
                with warnings.catch_warnings():
                    # torch.fx const folding inside linearize warns about a get_attr node; harmless.
                    warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
                    _, fn = linearize(g, theta)
            elif method == "revrev":
                _, pullback = vjp(g, theta)
                fn = _first(pullback)
            else:
                fn = _fwdrev(g, theta)
            self._parts.append((fn, w))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """$H v$ for a vector (or ``(m, P)`` batch of rows is not supported: one vector)."""
        self.num_matvecs += 1
        v = v.to(self.dtype)
        out = None
        for fn, w in self._parts:
            part = fn(v)
            out = w * part if out is None else out.add_(part, alpha=w)
        assert out is not None
        return out.detach()

    __call__ = matvec


def _first(pullback: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: pullback(v)[0]


def _fwdrev(g: Callable, theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: jvp(g, (theta,), (v,))[1]
