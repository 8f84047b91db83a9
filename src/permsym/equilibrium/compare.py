r"""Predicted vs measured equilibrium along the top Hessian eigen-directions (the CLI's report).

Directions $u_i$: top-$k$ eigenvectors of $H$. Predicted variance: the Lyapunov solution
restricted to them, which is exact when the $u_i$ are eigenvectors, since with $A = I - \eta H$
diagonal in that basis $\Sigma_{ij} = \eta^2 C_{ij} / (B(1 - a_i a_j))$. For a linear model on
mean-squared error (``mlp:d-1``), $H$ and $C$ are exact and the prediction including
multiplicative minibatch noise (:mod:`permsym.equilibrium.linear`) is added; SGD then starts
from the exact optimum. Excess loss: predicted $\mathrm{tr}(H\Sigma)/2$ (linear: exact; otherwise
the first-order $\eta\,\mathrm{tr}\,C / (4B)$).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from permsym.curvature.functional import LossFn, as_data
from permsym.equilibrium.linear import linear_moments, predict_stationary_covariance_linear
from permsym.equilibrium.lyapunov import (
    check_stability,
    predict_stationary_covariance,
    sampling_factor,
)
from permsym.equilibrium.measure import (
    MeasuredCovariance,
    default_loss_fn,
    measure_stationary_covariance,
)

__all__ = ["EquilibriumComparison", "equilibrium_comparison", "is_linear_least_squares"]


@dataclass(frozen=True)
class EquilibriumComparison:
    """Per-direction predicted and measured variances, excess loss and $\\eta\\lambda_{\\max}$."""

    directions: tuple[dict[str, float], ...]
    excess_loss: dict[str, Any]
    eta_lambda_max: float
    lr: float
    batch_size: int
    steps: int
    burn_in: int
    sampling: str
    linear: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "directions": [dict(d) for d in self.directions],
            "excess_loss": dict(self.excess_loss),
            "eta_lambda_max": self.eta_lambda_max,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "burn_in": self.burn_in,
            "sampling": self.sampling,
            "linear": self.linear,
        }


def is_linear_least_squares(model: nn.Module, loss_fn: LossFn, y: torch.Tensor) -> bool:
    """True for one ``nn.Linear`` with one output and bias, trained with ``mse_loss``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return (
        loss_fn is F.mse_loss
        and len(linears) == 1
        and linears[0].out_features == 1
        and linears[0].bias is not None
        and sum(p.numel() for p in model.parameters()) == linears[0].in_features + 1
        and y.ndim == 2
        and y.shape[1] == 1
    )


def equilibrium_comparison(
    model: nn.Module,
    data: Any,
    *,
    lr: float,
    batch_size: int,
    steps: int,
    burn_in: int | None = None,
    top_k: int = 5,
    loss_fn: LossFn | None = None,
    sampling: str = "with_replacement",
    loss_every: int = 1,
    generator: torch.Generator | None = None,
) -> EquilibriumComparison:
    """Predict and measure the SGD equilibrium along the top-``top_k`` Hessian directions.

    Warns :class:`~permsym.equilibrium.NoEquilibriumWarning` when $\\eta\\lambda_{\\max} \\ge 2$
    and then skips the SGD run (measured values are NaN).
    """
    from permsym.curvature import hessian_top_eigenvalues
    from permsym.noise import gradient_covariance, gradient_noise

    X, y = as_data(data)
    loss_fn = loss_fn or default_loss_fn(y)
    burn_in = steps // 5 if burn_in is None else burn_in
    n = X.shape[0]
    factor = sampling_factor("without_replacement" if sampling != "with_replacement" else sampling,
                             batch_size, n, call="equilibrium_comparison")
    linear = is_linear_least_squares(model, loss_fn, y)
    reference = min_loss = None
    exact = None
    if linear:
        mom = linear_moments(X, y)
        lam_all, U_all = torch.linalg.eigh(mom.H)
        k = min(top_k, lam_all.numel())
        lam, U = lam_all.flip(0)[:k], U_all.flip(1)[:, :k]
        reference, min_loss = mom.theta, mom.min_loss
        eta_lam = check_stability(float(lam[0]), lr, call="equilibrium_comparison")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already warned above if unstable
            sigma = predict_stationary_covariance(mom.H, mom.C, lr=lr, batch_size=batch_size,
                                                  sampling="with_replacement")
            sigma = sigma * factor
            if sampling == "with_replacement":
                exact = predict_stationary_covariance_linear(X, y, lr=lr, batch_size=batch_size)
        predicted = (U.T @ sigma @ U).diagonal()
        excess_pred = float(torch.trace(mom.H @ (exact if exact is not None else sigma))) / 2
        excess_method = "exact_linear" if exact is not None else "lyapunov"
    else:
        top = hessian_top_eigenvalues(model, loss_fn, (X, y), top_k, tol=1e-6, return_eigenvectors=True,
                                      generator=generator)
        U = top.eigenvectors  # on the model's device
        assert U is not None
        lam = torch.tensor(top.eigenvalues, dtype=torch.float64, device=U.device)
        eta_lam = check_stability(float(lam[0]), lr, call="equilibrium_comparison")
        C_U = gradient_covariance(model, loss_fn, (X, y), subspace=U)
        a = 1 - lr * lam
        sig_U = lr**2 * factor * C_U / batch_size / (1 - torch.outer(a, a))
        stable = (lr * lam > 0) & (lr * lam < 2)
        predicted = torch.where(stable, sig_U.diagonal(), torch.full_like(lam, float("inf")))
        trC = gradient_noise(model, loss_fn, (X, y), batch_size=batch_size, lr=lr).trace_C
        excess_pred = lr * factor * trC / (4 * batch_size)
        excess_method = "first_order"
    measured = None
    if eta_lam < 2:
        measured = measure_stationary_covariance(
            model, (X, y), lr=lr, batch_size=batch_size, steps=steps, burn_in=burn_in, subspace=U,
            loss_fn=loss_fn, sampling=sampling, reference=reference, min_loss=min_loss, loss_every=loss_every,
            generator=generator,
        )
    directions = []
    for i in range(U.shape[1]):
        d = {"eigenvalue": float(lam[i]), "predicted_variance": float(predicted[i])}
        if exact is not None:
            d["predicted_variance_exact"] = float(U[:, i] @ exact @ U[:, i])
        d.update(_measured(measured, i))
        base = d.get("predicted_variance_exact", d["predicted_variance"])
        d["ratio"] = d["measured_variance"] / base if base > 0 else float("nan")
        directions.append(d)
    nan = float("nan")
    excess = {
        "predicted": excess_pred,
        "method": excess_method,
        "measured": measured.excess_loss if measured else nan,
        "ci_low": measured.excess_loss_ci[0] if measured else nan,
        "ci_high": measured.excess_loss_ci[1] if measured else nan,
    }
    return EquilibriumComparison(
        directions=tuple(directions), excess_loss=excess, eta_lambda_max=eta_lam, lr=float(lr),
        batch_size=batch_size, steps=steps, burn_in=burn_in, sampling=sampling, linear=linear,
    )


def _measured(m: MeasuredCovariance | None, i: int) -> dict[str, float]:
    if m is None:
        nan = float("nan")
        return {"measured_variance": nan, "ci_low": nan, "ci_high": nan, "ess": nan}
    return {"measured_variance": m.variances[i], "ci_low": m.ci_low[i], "ci_high": m.ci_high[i], "ess": m.ess[i]}
