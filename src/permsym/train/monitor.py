r"""``NoiseMonitor``: gradient noise and SGD temperature measured during training.

Every ``every`` steps the monitor estimates $\mathrm{tr}\,C$ and $|G|^2$ from the current
minibatch (:func:`~permsym.train.estimators.batch_noise`), smooths them with a bias-corrected
exponential moving average

$$m_k = \beta m_{k-1} + (1-\beta) x_k, \qquad \hat x_k = m_k / (1 - \beta^k),$$

and reports the noise scale $\mathrm{tr}\,C / |G|^2$ and the temperature
$T = \eta\,\mathrm{tr}\,C / (2 B P)$ at the learning rate $\eta$ in effect (DESIGN 2.2).
Measurements go to the monitor's ``sinks`` (callables: a JSON-lines file, TensorBoard, a
progress bar) and to :attr:`NoiseMonitor.measurements`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from permsym._errors import check_positive_int
from permsym.curvature.functional import LossFn
from permsym.train.estimators import ESTIMATORS, batch_noise

__all__ = ["NoiseMeasurement", "NoiseMonitor"]

Sink = Callable[["NoiseMeasurement"], None]


def _json_number(value: float | None) -> Any:
    """JSON has no inf/nan: write them as strings (the CLI's convention)."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


@dataclass(frozen=True)
class NoiseMeasurement:
    """One measurement: smoothed values (``trace_C``, ``grad_norm_sq``, ``noise_scale``,
    ``temperature``), the raw ones of this minibatch, and what the controller did (if any)."""

    step: int
    epoch: int
    lr: float
    trace_C: float
    grad_norm_sq: float
    noise_scale: float
    temperature: float
    trace_C_raw: float
    trace_C_stderr: float
    grad_norm_sq_raw: float
    loss: float
    batch_size: int
    num_params: int
    method: str
    elapsed_s: float
    target_temperature: float | None = None
    lr_next: float | None = None
    lambda_max: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "lr": self.lr,
            "trace_C": _json_number(self.trace_C),
            "grad_norm_sq": _json_number(self.grad_norm_sq),
            "noise_scale": _json_number(self.noise_scale),
            "temperature": _json_number(self.temperature),
            "target_temperature": self.target_temperature,
            "lr_next": self.lr_next,
            "lambda_max": _json_number(self.lambda_max),
            "trace_C_raw": _json_number(self.trace_C_raw),
            "trace_C_stderr": _json_number(self.trace_C_stderr),
            "grad_norm_sq_raw": _json_number(self.grad_norm_sq_raw),
            "loss": _json_number(self.loss),
            "batch_size": self.batch_size,
            "num_params": self.num_params,
            "method": self.method,
            "elapsed_s": round(self.elapsed_s, 4),
        }


class NoiseMonitor:
    r"""Measure gradient noise every ``every`` steps of :func:`permsym.train.fit`.

    Args:
        every: measure at steps $0, N, 2N, \dots$ ($N$ = ``every``).
        smoothing: EMA factor $\beta \in [0, 1)$ (0: no smoothing).
        method: ``"auto"``, ``"per-sample"`` or ``"micro-batch"`` (see
            :func:`~permsym.train.estimators.batch_noise`).
        micro_batches: $K$ for the micro-batch estimator.
        sinks: callables receiving every :class:`NoiseMeasurement` (e.g.
            :class:`~permsym.train.logs.JsonlLog`).

    Examples:
        >>> import permsym, torch.nn.functional as F
        >>> model = permsym.build("mlp:3-4-1")
        >>> monitor = NoiseMonitor(every=5, smoothing=0.0)
        >>> X, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> m = monitor.measure(model, F.mse_loss, X, y, step=0, lr=0.1)
        >>> abs(m.temperature - 0.1 * m.trace_C / (2 * 8 * 21)) < 1e-12
        True
    """

    def __init__(
        self,
        *,
        every: int = 10,
        smoothing: float = 0.9,
        method: str = "auto",
        micro_batches: int = 4,
        sinks: Sequence[Sink] = (),
    ) -> None:
        check_positive_int("NoiseMonitor", "every", every)
        check_positive_int("NoiseMonitor", "micro_batches", micro_batches)
        if not (isinstance(smoothing, int | float) and 0 <= smoothing < 1):
            raise ValueError(f"NoiseMonitor: smoothing must be a number in [0, 1); got {smoothing!r}.")
        if method not in ESTIMATORS:
            raise ValueError(f"NoiseMonitor: method must be one of {', '.join(ESTIMATORS)}; got {method!r}.")
        self.every = every
        self.smoothing = float(smoothing)
        self.method = method
        self.micro_batches = micro_batches
        self.sinks = list(sinks)
        self.measurements: list[NoiseMeasurement] = []
        self.reset()

    def reset(self) -> None:
        """Forget the EMA state and the stored measurements (sinks are kept)."""
        self._ema = [0.0, 0.0]
        self._count = 0
        self._start = time.perf_counter()
        self.measurements = []

    def due(self, step: int) -> bool:
        """Whether ``step`` is a measurement step."""
        return step % self.every == 0

    def _smooth(self, trace: float, g2: float) -> tuple[float, float]:
        beta = self.smoothing
        self._count += 1
        self._ema = [beta * self._ema[0] + (1 - beta) * trace, beta * self._ema[1] + (1 - beta) * g2]
        correction = 1 - beta**self._count
        return self._ema[0] / correction, self._ema[1] / correction

    def measure(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        X: torch.Tensor,
        y: torch.Tensor,
        *,
        step: int,
        lr: float,
        epoch: int = 0,
    ) -> NoiseMeasurement:
        r"""Estimate noise on the minibatch ``(X, y)`` at the model's parameters; update the EMA.

        Nothing is sent to the sinks: :meth:`emit` does that, after a controller has acted.
        """
        raw = batch_noise(model, loss_fn, X, y, method=self.method, micro_batches=self.micro_batches)
        trace, g2 = self._smooth(raw.trace_C, raw.grad_norm_sq)
        B, P = int(X.shape[0]), raw.num_params  # the SGD batch (micro-batches may leave a remainder out)
        return NoiseMeasurement(
            step=step,
            epoch=epoch,
            lr=float(lr),
            trace_C=trace,
            grad_norm_sq=g2,
            noise_scale=trace / g2 if g2 > 0 else math.inf,
            temperature=float(lr) * trace / (2 * B * P),
            trace_C_raw=raw.trace_C,
            trace_C_stderr=raw.trace_C_stderr,
            grad_norm_sq_raw=raw.grad_norm_sq,
            loss=raw.loss,
            batch_size=B,
            num_params=P,
            method=raw.method,
            elapsed_s=time.perf_counter() - self._start,
        )

    def emit(self, measurement: NoiseMeasurement) -> None:
        """Store ``measurement`` and send it to every sink."""
        self.measurements.append(measurement)
        for sink in self.sinks:
            sink(measurement)
