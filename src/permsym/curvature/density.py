r"""Spectral density by stochastic Lanczos quadrature (SLQ), Gaussian-broadened.

For a unit probe $v$, $m$ Lanczos steps give $T_m = S \Theta S^\top$; the nodes $\theta_j$
and weights $\tau_j = (e_1^\top s_j)^2$ form the Gauss quadrature of the spectral measure
$\mu_v = \sum_i (v^\top u_i)^2 \delta_{\lambda_i}$, exact for polynomials of degree $\le 2m-1$.
Averaging over Gaussian probes gives $\mathbb E\,\mu_v = \frac1P \sum_i \delta_{\lambda_i}$ and
the density $\phi(x) = \frac1{n_v}\sum_{v,j} \tau_j \,\mathcal N(x; \theta_j, \sigma^2)$.

References:
    Lin, Saad, Yang 2016, SIAM Review 58(1); Ghorbani, Krishnan, Xiao 2019, arXiv:1901.10159.
"""

from __future__ import annotations

from typing import Any

import torch

from permsym.curvature.lanczos import lanczos
from permsym.curvature.operators import as_matvec, working_device

__all__ = ["broadened_density", "lanczos_quadrature"]


def lanczos_quadrature(
    A: Any, v0: torch.Tensor, *, num_steps: int, size: int | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature ``(nodes, weights)`` of $\\mu_{v_0}$ from ``num_steps`` Lanczos steps.

    The Lanczos basis lives on ``device`` (default: ``A``'s, see
    :func:`~permsym.curvature.operators.working_device`); nodes and weights are CPU tensors.

    Examples:
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> nodes, weights = lanczos_quadrature(A, torch.ones(3, dtype=torch.float64), num_steps=3)
        >>> nodes.round(decimals=6), weights.round(decimals=6)
        (tensor([1., 2., 3.], dtype=torch.float64), tensor([0.3333, 0.3333, 0.3333], dtype=torch.float64))
    """
    matvec, n = as_matvec(A, size=size)
    state = lanczos(matvec, num_steps=num_steps, size=n, v0=v0, device=working_device(A, device))
    theta, S = torch.linalg.eigh(state.tridiagonal())
    return theta, S[0] ** 2


def broadened_density(
    nodes: torch.Tensor, weights: torch.Tensor, *, sigma: float, grid: torch.Tensor
) -> torch.Tensor:
    r"""$\phi(x) = \sum_j w_j \mathcal N(x; \theta_j, \sigma^2)$ on ``grid`` (``nodes``, ``weights`` flat)."""
    diff = grid.unsqueeze(1) - nodes.unsqueeze(0)
    kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * (2 * torch.pi) ** 0.5)
    return kernel @ weights
