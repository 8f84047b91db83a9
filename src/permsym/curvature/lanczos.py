r"""Lanczos with full reorthogonalisation, in float64 whatever the operator's dtype.

After $m$ steps, $A Q_m = Q_m T_m + \beta_m q_{m+1} e_m^\top$ with $T_m$ tridiagonal. A Ritz
pair $(\theta_i, Q_m s_i)$ has residual norm $\|A u_i - \theta_i u_i\| = \beta_m |e_m^\top s_i|$,
and for symmetric $A$ some eigenvalue lies within that distance of $\theta_i$ (so the relative
tolerance ``tol`` bounds the relative eigenvalue error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from permsym.curvature.operators import as_matvec

__all__ = ["LanczosState", "lanczos", "top_eigenpairs"]


@dataclass(eq=False)
class LanczosState:
    """Growing Lanczos basis: ``Q`` (m, n) rows, ``alpha`` (m,), ``beta`` (m,)."""

    Q: list[torch.Tensor]
    alpha: list[float]
    beta: list[float]
    done: bool = False  # invariant subspace reached (beta ~ 0)

    def tridiagonal(self) -> torch.Tensor:
        """$T_m$ as a dense (m, m) float64 matrix."""
        m = len(self.alpha)
        T = torch.diag(torch.tensor(self.alpha, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.beta[: m - 1], dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        return T


def _start(n: int, v0: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    q = (torch.randn(n, generator=generator, dtype=torch.float64) if v0 is None else v0.to(torch.float64).clone())
    norm = q.norm()
    if not norm > 0:
        raise ValueError("lanczos: start vector v0 must be non-zero.")
    return q / norm


def _extend(state: LanczosState, matvec: Any, steps: int) -> None:
    """Run up to ``steps`` more Lanczos steps (stops early on an invariant subspace)."""
    for _ in range(steps):
        if state.done:
            return
        j = len(state.alpha)
        q = state.Q[j]
        w = matvec(q)
        a = float(q @ w)
        w = w - a * q
        if j > 0:
            w -= state.beta[j - 1] * state.Q[j - 1]
        Qm = torch.stack(state.Q)
        for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan-Parlett)
            w -= Qm.T @ (Qm @ w)
        b = float(w.norm())
        state.alpha.append(a)
        state.beta.append(b)
        scale = max(abs(x) for x in state.alpha) + max(state.beta)
        if b <= 1e-13 * scale or len(state.Q) == q.numel():
            state.done = True
            return
        state.Q.append(w / b)


def lanczos(A: Any, *, num_steps: int, size: int | None = None, v0: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> LanczosState:
    """Run ``num_steps`` Lanczos steps on ``A`` (matrix or matvec) from ``v0`` (default: Gaussian).

    Examples:
        >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
        >>> s = lanczos(A, num_steps=5, generator=torch.Generator().manual_seed(0))
        >>> torch.linalg.eigvalsh(s.tridiagonal()).round(decimals=6)
        tensor([1., 2., 3., 4., 5.], dtype=torch.float64)
    """
    matvec, n = as_matvec(A, size=size)
    state = LanczosState(Q=[_start(n, v0, generator)], alpha=[], beta=[])
    _extend(state, matvec, num_steps)
    return state


def top_eigenpairs(
    A: Any,
    k: int,
    *,
    tol: float = 1e-6,
    max_steps: int | None = None,
    size: int | None = None,
    which: str = "LA",
    generator: torch.Generator | None = None,
    return_eigenvectors: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, bool]:
    r"""The ``k`` largest-algebraic (``"LA"``) or largest-magnitude (``"LM"``) eigenpairs.

    Stops when every wanted Ritz value has relative residual
    $\beta_m |e_m^\top s_i| / |\theta_i| \le$ ``tol``.

    Returns:
        ``(eigenvalues (k,), residuals (k,), eigenvectors (n, k) or None, steps, converged)``,
        eigenvalues in descending order (of value or magnitude).
    """
    if which not in ("LA", "LM"):
        raise ValueError(f"top_eigenpairs: which must be 'LA' or 'LM'; got {which!r}.")
    matvec, n = as_matvec(A, size=size)
    if not 1 <= k <= n:
        raise ValueError(f"top_eigenpairs: k must be in [1, {n}]; got {k}.")
    max_steps = min(n, max_steps or max(10 * k, 100))
    state = LanczosState(Q=[_start(n, None, generator)], alpha=[], beta=[])
    _extend(state, matvec, min(max_steps, k + 2))
    while True:
        theta, S = torch.linalg.eigh(state.tridiagonal())
        order = torch.argsort(theta if which == "LA" else theta.abs(), descending=True)[:k]
        m = len(state.alpha)
        resid = torch.zeros(len(order), dtype=torch.float64) if state.done else state.beta[-1] * S[m - 1, order].abs()
        rel = resid / theta[order].abs().clamp_min(torch.finfo(torch.float64).tiny)
        converged = len(order) == k and bool((rel <= tol).all())
        if converged or state.done or m >= max_steps:
            break
        _extend(state, matvec, min(max_steps - m, max(1, math.ceil(0.1 * m))))
    vals = theta[order]
    vecs = None
    if return_eigenvectors:
        Qm = torch.stack(state.Q[:m])
        vecs = Qm.T @ S[:, order]
    return vals, resid, vecs, m, converged
