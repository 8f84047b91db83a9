r"""``TemperatureControl``: set the learning rate so that the SGD temperature follows a target.

With $T = \eta\,\mathrm{tr}\,C / (2 B P)$ (DESIGN 2.2) and a measured (smoothed)
$\mathrm{tr}\,C$, the learning rate that gives the target $T^*(t)$ is

$$\eta_t = \mathrm{clip}\Big(\frac{2 B P\, T^*(t)}{\mathrm{tr}\,C},\ \eta_{\min},\ \eta_{\max}\Big),$$

further capped by the stability bound $\eta \lambda_{\max} < 2$: with $\lambda_{\max}$ tracked by
power iterations every ``curvature_every`` steps, $\eta \le \rho / \lambda_{\max}$ with a margin
$\rho$ = ``max_sharpness`` $< 2$ (power iteration on a minibatch underestimates $\lambda_{\max}$).
A learning rate that would give $\eta\lambda_{\max} \ge 2$ is refused with a
:class:`StabilityWarning`; if even $\eta_{\min}$ is unstable, training stops with an error.

The controller writes ``lr`` into every parameter group of any ``torch.optim`` optimizer.

Note:
    The temperature, and the stability bound, are those of plain SGD. With Adam (or any
    preconditioned method) the step is $\eta\,P^{-1} g$ with a diagonal preconditioner $P$: the
    controller still makes $\eta$ proportional to $T^*/\mathrm{tr}\,C$, which moves the noise
    level in the right direction, but the reported $T$ is not the stationary temperature of that
    optimizer and $\eta\lambda_{\max}(H) < 2$ is not its stability condition (that would be
    $\lambda_{\max}(P^{-1}H)$). Bounds ``lr_min``/``lr_max`` are then the only safeguard that holds.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from permsym._errors import PermsymError, check_positive_int
from permsym.curvature.functional import LossFn
from permsym.train.monitor import NoiseMeasurement
from permsym.train.schedule import TemperatureSchedule, parse_schedule
from permsym.train.sharpness import power_lambda_max

__all__ = ["StabilityWarning", "TemperatureControl"]


class StabilityWarning(UserWarning):
    """A learning rate was refused because $\\eta\\lambda_{\\max} \\ge 2$ (SGD would diverge)."""


class TemperatureControl:
    r"""Learning-rate controller that makes the measured SGD temperature follow ``schedule``.

    Args:
        optimizer: any ``torch.optim`` optimizer; ``lr`` of every group is set by :meth:`update`.
        schedule: a :class:`TemperatureSchedule` or its string (``"cosine:T0=1e-4,T_end=1e-6"``).
        lr_min, lr_max: bounds on $\eta$ (the controller never leaves them).
        curvature_every: track $\lambda_{\max}$ every this many steps (``None``: never).
        power_iters: power iterations per check (warm-started).
        max_sharpness: margin $\rho$: $\eta \le \rho/\lambda_{\max}$, with $0 < \rho < 2$.
        generator: randomness of the first power-iteration vector.

    Examples:
        >>> import permsym
        >>> model = permsym.build("mlp:3-1")
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> ctl = TemperatureControl(opt, "constant:T0=1e-3", lr_min=1e-3, lr_max=1.0)
        >>> ctl.lr_for(trace_C=0.8, batch_size=4, num_params=4, step=0, total_steps=10)  # 2*4*4*1e-3/0.8
        0.04
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: TemperatureSchedule | str,
        *,
        lr_min: float,
        lr_max: float,
        curvature_every: int | None = 50,
        power_iters: int = 10,
        max_sharpness: float = 1.8,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"TemperatureControl: optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}.")
        self.schedule = parse_schedule(schedule) if isinstance(schedule, str) else schedule
        if not isinstance(self.schedule, TemperatureSchedule):
            raise TypeError(f"TemperatureControl: schedule must be a TemperatureSchedule or a string; got {type(schedule).__name__}.")
        if not (math.isfinite(lr_min) and math.isfinite(lr_max) and 0 < lr_min <= lr_max):
            raise ValueError(f"TemperatureControl: bounds must satisfy 0 < lr_min <= lr_max (finite); got lr_min={lr_min!r}, lr_max={lr_max!r}.")
        if not 0 < max_sharpness < 2:
            raise ValueError(f"TemperatureControl: max_sharpness must be in (0, 2); got {max_sharpness!r}.")
        if curvature_every is not None:
            check_positive_int("TemperatureControl", "curvature_every", curvature_every)
        check_positive_int("TemperatureControl", "power_iters", power_iters)
        self.optimizer = optimizer
        self.lr_min, self.lr_max = float(lr_min), float(lr_max)
        self.curvature_every = curvature_every
        self.power_iters = power_iters
        self.max_sharpness = float(max_sharpness)
        self.generator = generator
        self.lambda_max: float | None = None
        self.num_hvps = 0
        self.num_refused = 0
        self._vector: torch.Tensor | None = None

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def target(self, step: int, *, total_steps: int) -> float:
        """$T^*$ at ``step``."""
        return self.schedule(step, total_steps=total_steps)

    def due_curvature(self, step: int) -> bool:
        """Whether $\\lambda_{\\max}$ is re-estimated at ``step``."""
        return self.curvature_every is not None and step % self.curvature_every == 0

    def _stable(self, eta: float, step: int) -> float:
        lam = self.lambda_max
        if lam is None or not lam > 0:
            return eta
        cap = self.max_sharpness / lam
        if eta <= cap:
            return eta
        if cap < self.lr_min:
            raise PermsymError(
                f"TemperatureControl: no stable learning rate within the bounds: lr_min * lambda_max = "
                f"{self.lr_min:g} * {lam:.4g} = {self.lr_min * lam:.3g} must be < {self.max_sharpness:g} "
                f"(SGD diverges at eta*lambda_max >= 2; step {step}). Lower lr_min below {cap:.3g}."
            )
        if eta * lam >= 2:
            self.num_refused += 1
            warnings.warn(
                f"TemperatureControl: refused lr = {eta:.4g} at step {step}: eta*lambda_max = {eta * lam:.3g} >= 2 "
                f"(lambda_max = {lam:.4g}), where SGD diverges; using lr = {cap:.4g} (eta*lambda_max = "
                f"{self.max_sharpness:g}).",
                StabilityWarning,
                stacklevel=3,
            )
        return cap

    def lr_for(self, *, trace_C: float, batch_size: int, num_params: int, step: int, total_steps: int) -> float:
        r"""$\eta$ for the target at ``step``, within the bounds and the stability cap (not applied)."""
        T = self.target(step, total_steps=total_steps)
        eta = 2 * batch_size * num_params * T / trace_C if trace_C > 0 else self.lr_max
        eta = min(max(eta, self.lr_min), self.lr_max)
        return self._stable(eta, step)

    def set_lr(self, eta: float) -> None:
        """Write ``eta`` into every parameter group (after checking the bounds)."""
        if not self.lr_min <= eta <= self.lr_max:  # pragma: no cover - lr_for never does this
            raise PermsymError(f"TemperatureControl: lr must be in [{self.lr_min:g}, {self.lr_max:g}]; got {eta!r}.")
        for group in self.optimizer.param_groups:
            group["lr"] = eta

    def update(self, measurement: NoiseMeasurement, *, total_steps: int) -> float:
        """Set and return $\\eta$ for the smoothed $\\mathrm{tr}\\,C$ of ``measurement``."""
        eta = self.lr_for(
            trace_C=measurement.trace_C, batch_size=measurement.batch_size, num_params=measurement.num_params,
            step=measurement.step, total_steps=total_steps,
        )
        self.set_lr(eta)
        return eta

    def track_curvature(self, model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, *, step: int) -> float:
        """Re-estimate $\\lambda_{\\max}$ on ``(X, y)`` and re-check the current lr against it."""
        lam, self._vector, used = power_lambda_max(
            model, loss_fn, X, y, iters=self.power_iters, start=self._vector, generator=self.generator
        )
        self.num_hvps += used
        self.lambda_max = lam
        current = self.lr
        stable = self._stable(min(max(current, self.lr_min), self.lr_max), step)
        if stable != current:
            self.set_lr(stable)
        return lam

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.to_json(),
            "lr_min": self.lr_min,
            "lr_max": self.lr_max,
            "lr": self.lr,
            "lambda_max": self.lambda_max,
            "num_hvps": self.num_hvps,
            "num_refused": self.num_refused,
            "max_sharpness": self.max_sharpness,
        }
