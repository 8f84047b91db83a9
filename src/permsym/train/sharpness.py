r"""$\lambda_{\max}$ of the minibatch Hessian by a few power iterations on HVPs.

$v_{k+1} = H v_k / |H v_k|$, $\lambda \approx v_k^\top H v_k$ (the Rayleigh quotient, a lower
bound on $\lambda_{\max}$ when the dominant eigenvalue is the largest positive one). Products are
``jvp(grad(f))`` (:class:`~permsym.curvature.hvp.HessianOperator`, method ``"fwdrev"``: cheapest
for a handful of products). Warm-starting from the previous eigenvector makes a few iterations
per check enough while the Hessian changes slowly.
"""

from __future__ import annotations

import torch
from torch import nn

from permsym._errors import check_positive_int
from permsym.curvature.functional import FlatLoss, LossFn
from permsym.curvature.hvp import HessianOperator

__all__ = ["power_lambda_max"]


def power_lambda_max(
    model: nn.Module,
    loss_fn: LossFn,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    iters: int = 10,
    rtol: float = 1e-3,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[float, torch.Tensor, int]:
    r"""Dominant Hessian eigenvalue on ``(X, y)``, its eigenvector (flat, float64) and the HVPs spent.

    The model is not changed (a private eval-mode copy is used, so BatchNorm uses its running
    statistics). Stops after ``iters`` products or when $\lambda$ changes by less than ``rtol``
    relative.

    Examples:
        >>> import permsym, torch.nn.functional as F
        >>> model = permsym.build("mlp:2-1").double()
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> lam, _, _ = power_lambda_max(model, F.mse_loss, X, torch.zeros(2, 1, dtype=torch.float64), iters=100, rtol=1e-12)
        >>> round(lam, 6)  # H = 2 E[x~ x~^T] with x~ = (x, 1): eigenvalues 3, 1, 0
        3.0
    """
    check_positive_int("power_lambda_max", "iters", iters)
    op = HessianOperator(FlatLoss(model, loss_fn, (X, y)), method="fwdrev")
    P = op.shape[0]
    if start is not None and start.shape == (P,) and float(start.norm()) > 0:
        v = start.to(torch.float64).clone()
    else:
        v = torch.randn(P, generator=generator, dtype=torch.float64)
    v /= v.norm()
    lam = 0.0
    for k in range(iters):
        w = op.matvec(v.to(op.dtype)).to(torch.float64)
        new = float(v @ w)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0, v, op.num_matvecs
        v = w / norm
        if k > 0 and abs(new - lam) <= rtol * abs(new):
            return new, v, op.num_matvecs
        lam = new
    return lam, v, op.num_matvecs
