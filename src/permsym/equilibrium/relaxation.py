r"""Two-phase relaxation of SGD from a perturbed start.

Near a minimum $\mathbb E[\delta_t] = A^t\delta_0$: the excess loss first falls fast (the
stiff directions, rate $\approx 2\eta\lambda_{\max}$ per step), then slowly (small $\lambda$ and
the build-up of the stationary noise floor). We fit
$y(t) = a\,e^{-r_f t} + b\,e^{-r_s t} + c$ with $r_f > r_s \ge 0$ (scipy ``least_squares`` on
log-parameters, a few starting rate ratios, best residual kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from permsym._errors import PermsymError, check_positive_int
from permsym.curvature.functional import FlatLoss, LossFn, as_data
from permsym.equilibrium.measure import default_loss_fn
from permsym.equilibrium.sgd import run_sgd

__all__ = ["RelaxationFit", "fit_two_phase", "relaxation_run"]


@dataclass(frozen=True)
class RelaxationFit:
    """$y(t) = a e^{-r_f t} + b e^{-r_s t} + c$ fitted to a relaxation curve."""

    fast_rate: float
    slow_rate: float
    fast_amplitude: float
    slow_amplitude: float
    plateau: float
    rms_residual: float

    def predict(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        return (self.fast_amplitude * torch.exp(-self.fast_rate * t)
                + self.slow_amplitude * torch.exp(-self.slow_rate * t) + self.plateau)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def fit_two_phase(t: torch.Tensor, y: torch.Tensor) -> RelaxationFit:
    """Fit the two-phase model to ``y(t)``.

    Examples:
        >>> t = torch.arange(400, dtype=torch.float64)
        >>> fit = fit_two_phase(t, 5 * torch.exp(-0.2 * t) + torch.exp(-0.01 * t) + 0.1)
        >>> round(fit.fast_rate, 3), round(fit.slow_rate, 4)
        (0.2, 0.01)
    """
    import numpy as np
    from scipy.optimize import least_squares

    tt = t.to(torch.float64).numpy()
    yy = y.to(torch.float64).numpy()
    if tt.size < 6 or not np.all(np.isfinite(yy)):
        raise PermsymError(f"fit_two_phase: y must hold at least 6 finite values; got {yy.size} values.")
    span = float(tt.max() - tt.min()) or 1.0
    c0 = float(np.min(yy))
    amp = max(float(yy[0] - c0), 1e-12)

    def model(x: Any, la: float, lb: float, lrf: float, lrs: float, c: float) -> Any:
        rf, rs = math.exp(lrf), math.exp(lrs)
        return math.exp(la) * np.exp(-rf * x) + math.exp(lb) * np.exp(-rs * x) + c

    best = None
    for ratio in (3.0, 10.0, 30.0, 100.0):
        p0 = [math.log(0.8 * amp), math.log(0.2 * amp), math.log(ratio * 3.0 / span), math.log(3.0 / span), c0]
        sol = least_squares(lambda p: model(tt, *p) - yy, p0, max_nfev=20000, x_scale="jac")
        if not np.all(np.isfinite(sol.x)):
            continue
        popt = sol.x
        rms = float(np.sqrt(np.mean((model(tt, *popt) - yy) ** 2)))
        if best is None or rms < best[1]:
            best = (popt, rms)
    if best is None:
        raise PermsymError("fit_two_phase: the two-phase model must fit the curve; least_squares found no finite fit.")
    la, lb, lrf, lrs, c = best[0]
    (af, rf), (as_, rs) = sorted([(math.exp(la), math.exp(lrf)), (math.exp(lb), math.exp(lrs))], key=lambda p: -p[1])
    return RelaxationFit(fast_rate=rf, slow_rate=rs, fast_amplitude=af, slow_amplitude=as_, plateau=float(c),
                         rms_residual=best[1])


def relaxation_run(
    model: nn.Module,
    data: Any,
    *,
    lr: float,
    batch_size: int,
    steps: int,
    direction: torch.Tensor,
    loss_fn: LossFn | None = None,
    sampling: str = "with_replacement",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, RelaxationFit]:
    r"""Start SGD at $\theta_0 + $ ``direction``; return ``(t, J(\theta_t) - J(\theta_0), fit)``."""
    check_positive_int("relaxation_run", "steps", steps)
    X, y = as_data(data)
    flat = FlatLoss(model, loss_fn or default_loss_fn(y), (X, y))
    if direction.shape != flat.theta.shape:
        raise ValueError(
            f"relaxation_run: direction must have shape ({flat.num_params},); got {tuple(direction.shape)}."
        )
    J0 = float(flat.loss())
    curve = torch.empty(steps, dtype=torch.float64)

    def record(t: int, theta: torch.Tensor, full_loss: Any) -> None:
        curve[t] = full_loss() - J0

    start = flat.theta + direction.to(device=flat.theta.device, dtype=flat.dtype)
    run_sgd(flat, start, lr=lr, batch_size=batch_size, steps=steps,
            sampling=sampling, generator=generator, on_step=record, call="relaxation_run")
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    return t, curve, fit_two_phase(t, curve)
