r"""Hessian-vector products $v \mapsto H v$ with torch.func, summed over data chunks.

Four ways (all exact, differing in cost); ``"auto"`` (the default) takes ``"rop"`` where it
applies and ``"revrev"`` elsewhere:

- ``"rop"``: the R-operator written out for ``nn.Sequential`` MLPs (Linear / MaskedLinear and
  element-wise activations, mean cross-entropy or squared error; :mod:`permsym.curvature.rop`).
  One cached forward and backward per chunk, then six GEMMs per hidden layer per product.
- ``"revrev"``: ``vjp`` of ``grad(f)`` built once per chunk and reused
  (reverse-over-reverse; each product is one backward pass through the cached gradient graph,
  run by the C++ autograd engine).
- ``"linearize"``: ``torch.func.linearize`` of the gradient at $\theta$, built once per chunk
  and reused (forward-mode through a traced, constant-folded fx graph). Per product about as
  fast as ``"revrev"`` on large models, but tracing costs 0.2-0.4 s per operator (2-5 s on
  the first call in a process), and the fx graph runs in Python, which dominates on small
  models.
- ``"fwdrev"``: ``jvp(grad(f))`` recomputed per product (forward-over-reverse; memory bounded
  by one chunk; about twice the cost per product).

Measured on a shared 2-core CPU, two torch threads (MLP 64-256-256-10, 2048 samples): build /
per product rop 6 ms / 7.7 ms, revrev 7 ms / 9.8 ms, linearize 249 ms / 9.5 ms, fwdrev
1 ms / 17.5 ms; top-5 by Lanczos (50 products) 0.43 s with rop, 0.56 s with revrev, 0.76 s with
linearize. Hutch++ with 99 products on a 3,466-parameter model (1,797 samples): rop 0.067 s,
linearize 0.30 s. See benchmarks/bench_curvature.py and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.func import grad, jvp, linearize, vjp

from permsym.curvature.functional import FlatLoss
from permsym.curvature.rop import RopChunk, supports

__all__ = ["METHODS", "HessianOperator"]

METHODS = ("auto", "rop", "revrev", "linearize", "fwdrev")


class HessianOperator:
    """The Hessian of a :class:`FlatLoss` at its ``theta`` as a matvec (counts its calls).

    Attributes:
        method: the product in use (``"auto"`` resolved).
        shape: ``(P, P)``.
        dtype: dtype of the products.
        device: device of the products (the model's); vectors are moved there.
        num_matvecs: products computed so far.
    """

    def __init__(self, flat: FlatLoss, *, method: str = "auto") -> None:
        if method not in METHODS:
            raise ValueError(f"HessianOperator: method must be one of {', '.join(METHODS)}; got {method!r}.")
        if method in ("auto", "rop"):
            reason = supports(flat.module, flat.loss_fn, flat.X, flat.y)
            if reason is not None and method == "rop":
                raise ValueError(f"HessianOperator: hvp='rop' needs a plain MLP; {reason}. Use hvp='auto'.")
            method = "rop" if reason is None else "revrev"
        self.flat = flat
        self.method = method
        self.shape = (flat.num_params, flat.num_params)
        self.dtype = flat.dtype
        self.device = flat.theta.device
        self.num_matvecs = 0
        theta = flat.theta
        self._parts: list[tuple[Callable[[torch.Tensor], torch.Tensor], float]] = []
        if method == "rop":
            params = flat.unflatten(theta)
            self._rop = [RopChunk(flat.module, params, X, y, flat.loss_fn, w) for X, y, w in flat.chunks]
            return
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
        v = v.to(device=self.device, dtype=self.dtype)
        if self.method == "rop":
            flat_out = torch.zeros_like(v)
            views, out_views = self.flat.unflatten(v), self.flat.unflatten(flat_out)
            for chunk in self._rop:
                chunk(views, out_views)
            return flat_out
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
