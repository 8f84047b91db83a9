r"""Measured stationary covariance of real minibatch SGD iterates, projected on a subspace.

From a trained point $\theta_0$, run SGD for ``burn_in + steps`` steps and record
$p_t = V^\top(\theta_t - \theta_0)$ (columns of $V$: directions, e.g. top Hessian eigenvectors)
and the excess loss $J(\theta_t) - J^*$. The covariance of the $p_t$ estimates
$V^\top \Sigma V$; each variance gets a 95% interval from the effective sample size of the
series $(p_{t,i} - \bar p_i)^2$ (see :mod:`permsym.equilibrium.statistics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from permsym._errors import check_positive_int
from permsym.curvature.functional import FlatLoss, LossFn, as_data
from permsym.equilibrium.sgd import run_sgd
from permsym.equilibrium.statistics import mean_with_ci

__all__ = ["MeasuredCovariance", "default_loss_fn", "measure_stationary_covariance"]


@dataclass(frozen=True, eq=False)
class MeasuredCovariance:
    """Time averages of an SGD run at stationarity (per direction: variance and 95% interval)."""

    variances: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    ess: tuple[float, ...]
    mean_offset: tuple[float, ...]
    excess_loss: float
    excess_loss_ci: tuple[float, float]
    steps: int
    burn_in: int
    lr: float
    batch_size: int
    sampling: str
    covariance: torch.Tensor = field(repr=False)  # (k, k) float64

    def to_json(self) -> dict[str, Any]:
        return {
            "variances": list(self.variances),
            "ci_low": list(self.ci_low),
            "ci_high": list(self.ci_high),
            "ess": list(self.ess),
            "mean_offset": list(self.mean_offset),
            "excess_loss": self.excess_loss,
            "excess_loss_ci": list(self.excess_loss_ci),
            "steps": self.steps,
            "burn_in": self.burn_in,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "sampling": self.sampling,
        }


def default_loss_fn(y: torch.Tensor) -> LossFn:
    """``mse_loss`` for floating targets, ``cross_entropy`` for integer labels."""
    return F.mse_loss if y.is_floating_point() else F.cross_entropy


def measure_stationary_covariance(
    model: nn.Module,
    data: Any,
    *,
    lr: float,
    batch_size: int,
    steps: int,
    burn_in: int = 0,
    subspace: torch.Tensor,
    loss_fn: LossFn | None = None,
    sampling: str = "with_replacement",
    reference: torch.Tensor | None = None,
    min_loss: float | None = None,
    loss_every: int = 1,
    generator: torch.Generator | None = None,
) -> MeasuredCovariance:
    r"""Run SGD from the model's parameters and measure $V^\top \mathrm{Cov}[\theta_t] V$ and $\mathbb E[J - J^*]$.

    Args:
        subspace: ``(P, k)`` directions $V$ (orthonormal columns for variances along them).
        reference: $\theta^*$ (default: the model's parameters): SGD starts there and $p_t$ is
            measured from it.
        min_loss: $J^*$ (default: $J(\theta^*)$).
        loss_every: record the full-data loss every this many steps (it costs a full pass).
    """
    call = "measure_stationary_covariance"
    check_positive_int(call, "steps", steps)
    check_positive_int(call, "batch_size", batch_size)
    check_positive_int(call, "loss_every", loss_every)
    if burn_in < 0:
        raise ValueError(f"{call}: burn_in must be >= 0; got {burn_in}.")
    if not lr > 0:
        raise ValueError(f"{call}: lr must be > 0; got {lr!r}.")
    X, y = as_data(data)
    flat = FlatLoss(model, loss_fn or default_loss_fn(y), (X, y))
    P = flat.num_params
    if subspace.ndim != 2 or subspace.shape[0] != P:
        raise ValueError(f"{call}: subspace must be a (P, k) matrix with P = {P}; got shape {tuple(subspace.shape)}.")
    device = flat.theta.device  # the model's: directions and reference are moved there
    V = subspace.to(device=device, dtype=torch.float64)
    theta0 = flat.theta if reference is None else reference.to(device=device, dtype=flat.dtype)
    J_star = float(flat.loss(theta0)) if min_loss is None else float(min_loss)
    proj = torch.empty(steps, V.shape[1], dtype=torch.float64, device=device)
    losses: list[float] = []

    def record(t: int, theta: torch.Tensor, full_loss: Any) -> None:
        s = t - burn_in
        if s < 0:
            return
        proj[s] = (theta.to(torch.float64) - theta0.to(torch.float64)) @ V
        if s % loss_every == 0:
            losses.append(full_loss() - J_star)

    run_sgd(flat, theta0, lr=lr, batch_size=batch_size, steps=burn_in + steps, sampling=sampling,
            generator=generator, on_step=record, call=call)
    proj = proj.cpu()  # the statistics below are small and run on the CPU
    mean = proj.mean(0)
    dev = proj - mean
    cov = dev.T @ dev / steps
    stats = [mean_with_ci(dev[:, i] ** 2) for i in range(V.shape[1])]
    ex, ex_lo, ex_hi, _ = mean_with_ci(torch.tensor(losses, dtype=torch.float64))
    return MeasuredCovariance(
        variances=tuple(s[0] for s in stats),
        ci_low=tuple(s[1] for s in stats),
        ci_high=tuple(s[2] for s in stats),
        ess=tuple(s[3] for s in stats),
        mean_offset=tuple(float(m) for m in mean),
        excess_loss=ex,
        excess_loss_ci=(ex_lo, ex_hi),
        steps=steps,
        burn_in=burn_in,
        lr=float(lr),
        batch_size=batch_size,
        sampling=sampling,
        covariance=0.5 * (cov + cov.T),
    )
