"""Hessian quantities of a model's loss: top eigenvalues, trace, spectral density, dense reference.

All functions take ``(model, loss_fn, data)``, work on a private flat copy of the parameters
(:class:`~permsym.curvature.functional.FlatLoss`), never mutate the model, and run with BLAS
threads capped (see :mod:`permsym._threads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp, vmap

from permsym._threads import limited_threads
from permsym.curvature.density import broadened_density, lanczos_quadrature
from permsym.curvature.functional import FlatLoss, LossFn
from permsym.curvature.hvp import HessianOperator
from permsym.curvature.lanczos import top_eigenpairs
from permsym.curvature.trace import trace_estimate

__all__ = [
    "SpectralDensity",
    "TopEigenvalues",
    "TraceEstimate",
    "dense_hessian",
    "hessian_operator",
    "hessian_top_eigenvalues",
    "hessian_trace",
    "spectral_density",
]


@dataclass(frozen=True, eq=False)
class TopEigenvalues:
    """Top Hessian eigenvalues (descending), their residual norms and the HVPs spent."""

    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    num_matvecs: int
    converged: bool
    num_params: int
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)  # (P, k) float64

    def to_json(self) -> dict[str, Any]:
        return {
            "top_eigenvalues": list(self.eigenvalues),
            "residuals": list(self.residuals),
            "num_matvecs": self.num_matvecs,
            "converged": self.converged,
            "num_params": self.num_params,
        }


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate with its standard error."""

    estimate: float
    stderr: float
    num_matvecs: int
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "stderr": self.stderr, "num_matvecs": self.num_matvecs, "method": self.method}


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """Gaussian-broadened SLQ density on ``grid`` (integrates to about 1) and its raw quadrature."""

    grid: torch.Tensor
    values: torch.Tensor
    nodes: torch.Tensor  # (num_probes * num_steps,)
    weights: torch.Tensor  # sums to 1 over all probes
    sigma: float
    num_matvecs: int

    def fraction_near_zero(self, epsilon: float = 1e-2) -> float:
        r"""Spectral mass with $|\lambda| < \epsilon \lambda_{\max}$ (from the quadrature weights)."""
        lmax = float(self.nodes.max())
        return float(self.weights[self.nodes.abs() < epsilon * lmax].sum())

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": self.grid.tolist(),
            "values": self.values.tolist(),
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "sigma": self.sigma,
            "num_matvecs": self.num_matvecs,
            "fraction_near_zero": self.fraction_near_zero(),
        }


def hessian_operator(
    model: nn.Module, loss_fn: LossFn, data: Any, *, hvp: str = "auto",
    chunk_size: int | None = None, dtype: torch.dtype | None = None,
) -> HessianOperator:
    """The Hessian at the model's parameters as a reusable, counting matvec."""
    return HessianOperator(FlatLoss(model, loss_fn, data, chunk_size=chunk_size, dtype=dtype), method=hvp)


def hessian_top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    k: int = 5,
    *,
    tol: float = 1e-6,
    max_steps: int | None = None,
    solver: str = "lanczos",
    hvp: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    generator: torch.Generator | None = None,
    return_eigenvectors: bool = False,
) -> TopEigenvalues:
    r"""The ``k`` largest (algebraic) eigenvalues of $H = \nabla^2 J(\theta)$.

    ``solver="lanczos"``: full reorthogonalisation (basis in the products' dtype, $T_m$ in
    float64); stops when every wanted Ritz value's estimated relative error
    $\min(r, r^2/\delta)/|\theta| \le$ ``tol`` ($r = \|H u - \theta u\|$, $\delta$ the gap to
    the nearest other Ritz value; with ``return_eigenvectors`` when $r \le$ ``tol`` $|\theta|$).
    ``solver="eigsh"``: ARPACK (``scipy.sparse.linalg.eigsh``) on a LinearOperator, ``tol`` as
    ARPACK's. ``hvp`` picks the product (see :mod:`permsym.curvature.hvp`; the default
    ``"auto"`` takes the written-out R-operator for plain MLPs and ``"revrev"`` otherwise).

    Note:
        Each estimate concerns an eigenvalue the Krylov space has reached: one it has not
        reached yet can be skipped (any Lanczos stopping rule shares this). On
        ``mlp:64-256-256-10`` (clustered top-5, float32) the default ``tol=1e-6`` stopped after
        50 products with relative errors <= 2e-7 for six start vectors; ``tol=1e-4`` and
        ``1e-3`` stopped earlier with errors up to 2.7e-5 and 1.1e-2: ``tol`` is an estimate
        for eigenvalues already found, not a bound (benchmarks/bench_curvature.py).
    """
    if solver not in ("lanczos", "eigsh"):
        raise ValueError(f"hessian_top_eigenvalues: solver must be 'lanczos' or 'eigsh'; got {solver!r}.")
    with limited_threads(torch_threads=threads):
        op = hessian_operator(model, loss_fn, data, hvp=hvp, chunk_size=chunk_size, dtype=dtype)
        P = op.shape[0]
        if not 1 <= k <= P:
            raise ValueError(f"hessian_top_eigenvalues: k must be in [1, {P}]; got {k}.")
        if solver == "lanczos":
            vals, resid, vecs, _, converged = top_eigenpairs(
                op, k, tol=tol, max_steps=max_steps, generator=generator, return_eigenvectors=return_eigenvectors
            )
        else:
            vals, resid, vecs, converged = _eigsh(op, k, tol, max_steps, generator, return_eigenvectors)
    return TopEigenvalues(
        eigenvalues=tuple(float(v) for v in vals),
        residuals=tuple(float(r) for r in resid),
        num_matvecs=op.num_matvecs,
        converged=converged,
        num_params=P,
        eigenvectors=vecs,
    )


def _eigsh(op: HessianOperator, k: int, tol: float, max_steps: int | None, generator: torch.Generator | None,
           vectors: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    from scipy.sparse.linalg import LinearOperator, eigsh

    P = op.shape[0]
    lin = LinearOperator((P, P), matvec=lambda v: op(torch.from_numpy(np.ascontiguousarray(v).reshape(-1))).double().cpu().numpy(),
                         dtype=np.float64)
    v0 = torch.randn(P, generator=generator, dtype=torch.float64).numpy()
    vals, V = eigsh(lin, k=k, which="LA", v0=v0, tol=tol, maxiter=max_steps)
    order = np.argsort(vals)[::-1].copy()
    vals_t = torch.from_numpy(vals[order].copy())
    vecs = torch.from_numpy(V[:, order].copy()).to(op.device)  # on the model's device, as Lanczos's
    resid = torch.stack([(op(vecs[:, i]).double() - vals_t[i] * vecs[:, i]).norm() for i in range(k)]).cpu()
    return vals_t, resid, (vecs if vectors else None), True


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    method: str = "hutchpp",
    num_matvecs: int = 99,
    hvp: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    r"""$\mathrm{tr}\,H$ by Hutch++ (default) or Hutchinson, with a standard error."""
    with limited_threads(torch_threads=threads):
        op = hessian_operator(model, loss_fn, data, hvp=hvp, chunk_size=chunk_size, dtype=dtype)
        est, se, _ = trace_estimate(op, num_matvecs=num_matvecs, method=method, generator=generator)
    return TraceEstimate(estimate=est, stderr=se, num_matvecs=op.num_matvecs, method=method)


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    num_probes: int = 1,
    num_steps: int = 80,
    sigma: float | None = None,
    grid_size: int = 400,
    hvp: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    r"""Hessian eigenvalue density by stochastic Lanczos quadrature.

    Each of ``num_probes`` Gaussian probes gets ``num_steps`` Lanczos steps; the Ritz values are
    broadened by Gaussians of width ``sigma`` (default: 1% of the Ritz range).
    """
    with limited_threads(torch_threads=threads):
        op = hessian_operator(model, loss_fn, data, hvp=hvp, chunk_size=chunk_size, dtype=dtype)
        P = op.shape[0]
        nodes, weights = [], []
        for _ in range(num_probes):
            v0 = torch.randn(P, generator=generator, dtype=torch.float64)
            nd, wt = lanczos_quadrature(op, v0, num_steps=min(num_steps, P))
            nodes.append(nd)
            weights.append(wt / num_probes)
    nodes_t, weights_t = torch.cat(nodes), torch.cat(weights)
    lo, hi = float(nodes_t.min()), float(nodes_t.max())
    width = sigma if sigma is not None else max(1e-2 * (hi - lo), 1e-12 * max(abs(hi), 1.0))
    grid = torch.linspace(lo - 5 * width, hi + 5 * width, grid_size, dtype=torch.float64)
    values = broadened_density(nodes_t, weights_t, sigma=width, grid=grid)
    return SpectralDensity(grid=grid, values=values, nodes=nodes_t, weights=weights_t, sigma=width,
                           num_matvecs=op.num_matvecs)


def dense_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    block: int = 256,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    r"""The exact $P \times P$ Hessian (symmetrised), by vmapped ``jvp(grad)`` over identity blocks.

    For small models only: memory is $P^2$ (plus ``block`` products at a time).
    """
    with limited_threads(torch_threads=threads):
        flat = FlatLoss(model, loss_fn, data, chunk_size=chunk_size, dtype=dtype)
        P = flat.num_params
        if P > 20_000:
            raise ValueError(
                f"dense_hessian: the model must have at most 20000 parameters for a dense Hessian; got {P}. "
                f"Use hessian_top_eigenvalues or hessian_trace."
            )
        device = flat.theta.device
        H = torch.zeros(P, P, dtype=flat.dtype, device=device)
        theta = flat.theta
        for X, y, w in flat.chunks:
            g = grad(flat.chunk_fn(X, y))
            hv = vmap(lambda v, g=g: jvp(g, (theta,), (v,))[1])
            for s in range(0, P, block):
                e = min(block, P - s)
                E = torch.zeros(e, P, dtype=flat.dtype, device=device)
                idx = torch.arange(e, device=device)
                E[idx, s + idx] = 1.0
                H[:, s : s + e] += w * hv(E).T
    return 0.5 * (H + H.T)


