"""A plain, deterministic minibatch SGD training loop, optionally noise-aware.

Shuffling comes from a private ``torch.Generator`` seeded with ``seed``, so on the CPU the same
seed gives the same parameters bit for bit. Dropout layers draw from torch's global RNG (torch
offers no per-module generator): seed it too for reproducible dropout. A
:class:`~permsym.train.monitor.NoiseMonitor` measures gradient noise on the minibatches; its
forward passes run under ``torch.random.fork_rng``, so monitoring never changes the trajectory; a
:class:`~permsym.train.temperature.TemperatureControl` sets the learning rate from it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from permsym._errors import PermsymError, check_positive_int
from permsym.curvature.functional import LossFn, as_data

if TYPE_CHECKING:
    from permsym.train.monitor import NoiseMonitor
    from permsym.train.temperature import TemperatureControl

__all__ = ["History", "TrainingDiverged", "fit"]


class TrainingDiverged(PermsymError):
    """The loss became non-finite; the model holds the parameters of the last finished epoch."""


@dataclass(frozen=True)
class History:
    """Mean minibatch loss per epoch and the number of SGD steps taken."""

    losses: tuple[float, ...]
    steps: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "steps": self.steps, "epochs": len(self.losses), "seed": self.seed}


def fit(
    model: nn.Module,
    data: Any,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    monitor: NoiseMonitor | None = None,
    controller: TemperatureControl | None = None,
) -> History:
    r"""Train ``model`` in place by SGD, $\theta \leftarrow \theta - \eta \nabla \hat J_B(\theta)$, over shuffled epochs.

    Without ``optimizer``, ``lr_schedule``, ``monitor`` and ``controller`` this is plain SGD at a
    fixed ``lr`` (bit for bit the same as before these options existed).

    Args:
        model: trained in place (train mode during the run, restored afterwards).
        data: ``(X, y)`` or a Dataset; ``loss_fn`` defaults to mse (float targets) or
            cross-entropy (integer labels).
        on_epoch: ``on_epoch(epoch, mean_loss)`` after every finished epoch (e.g. save a checkpoint).
        optimizer: a ``torch.optim`` optimizer over the model's parameters; ``lr`` is written
            into its groups at the start. Default: plain SGD.
        lr_schedule: ``lr_schedule(step) -> lr`` for step $t = 0, 1, \dots$ (e.g. a step decay).
        monitor: measures $\mathrm{tr}\,C$, $|G|^2$ and $T$ on the minibatch every ``monitor.every``
            steps, before that step's update.
        controller: sets the learning rate after each measurement (needs ``monitor``); its
            optimizer is used for the updates.

    Raises:
        TrainingDiverged: on a non-finite loss; the model is reset to the last finished epoch
            (an optimizer's internal state, e.g. momentum, is not reset).
    """
    import torch.nn.functional as F

    check_positive_int("fit", "epochs", epochs)
    check_positive_int("fit", "batch_size", batch_size)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"fit: lr must be a finite number > 0; got {lr!r}.")
    if controller is not None:
        if monitor is None:
            raise ValueError("fit: a TemperatureControl needs a NoiseMonitor to measure tr C; pass monitor=NoiseMonitor(...).")
        if lr_schedule is not None:
            raise ValueError("fit: pass either lr_schedule or controller, not both (both set the learning rate).")
        if optimizer is not None and optimizer is not controller.optimizer:
            raise ValueError("fit: optimizer must be the one the TemperatureControl wraps (or omitted).")
        optimizer = controller.optimizer
    X, y = as_data(data)
    first = next(model.parameters())
    dtype, device = first.dtype, first.device  # data follow the model (a GPU model trains on the GPU)
    X = X.to(device=device, dtype=dtype)
    y = y.to(device=device, dtype=dtype) if y.is_floating_point() else y.to(device)
    loss_fn = loss_fn or (F.mse_loss if y.is_floating_point() else F.cross_entropy)
    n = X.shape[0]
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.train()
    losses: list[float] = []
    steps = 0
    total_steps = epochs * math.ceil(n / batch_size)
    current_lr = lr
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    try:
        for epoch in range(1, epochs + 1):
            good = copy.deepcopy(model.state_dict())
            perm = torch.randperm(n, generator=generator).to(device)  # drawn on the CPU: same order everywhere
            total, count = 0.0, 0
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                if lr_schedule is not None or controller is not None:
                    current_lr = _next_lr(steps, lr_schedule, optimizer, controller)
                if monitor is not None and (monitor.due(steps) or (controller is not None and controller.due_curvature(steps))):
                    current_lr = _observe(model, loss_fn, X[idx], y[idx], steps, epoch, current_lr, total_steps, monitor, controller)
                loss = loss_fn(model(X[idx]), y[idx])
                if not torch.isfinite(loss):
                    model.load_state_dict(good)
                    raise TrainingDiverged(
                        f"fit: the training loss must stay finite; got {float(loss.detach())} at epoch {epoch}, "
                        f"step {steps + 1} (lr = {current_lr:g}). Parameters are reset to the end of epoch "
                        f"{epoch - 1}; use a smaller lr."
                    )
                grads = torch.autograd.grad(loss, params)
                if optimizer is not None:
                    for p, g in zip(params, grads, strict=True):
                        p.grad = g
                    optimizer.step()
                else:
                    with torch.no_grad():
                        for p, g in zip(params, grads, strict=True):
                            p.sub_(g, alpha=current_lr)
                total += float(loss.detach()) * idx.numel()
                count += idx.numel()
                steps += 1
            losses.append(total / count)
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
    finally:
        model.train(was_training)
        if optimizer is not None:
            for p in params:
                p.grad = None
    return History(losses=tuple(losses), steps=steps, seed=seed)


def _next_lr(
    step: int,
    lr_schedule: Callable[[int], float] | None,
    optimizer: torch.optim.Optimizer | None,
    controller: TemperatureControl | None,
) -> float:
    """The lr for ``step``: from the schedule (written into the optimizer) or the controller's."""
    if controller is not None:
        return controller.lr
    assert lr_schedule is not None
    value = float(lr_schedule(step))
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"fit: lr_schedule must return a finite number > 0; got {value!r} at step {step}.")
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = value
    return value


def _observe(
    model: nn.Module,
    loss_fn: LossFn,
    xb: torch.Tensor,
    yb: torch.Tensor,
    step: int,
    epoch: int,
    lr: float,
    total_steps: int,
    monitor: NoiseMonitor,
    controller: TemperatureControl | None,
) -> float:
    """Curvature check and noise measurement at ``step``; return the lr for this step's update.

    The measurement reports $T$ at the lr used since the previous measurement (what the
    controller achieved); the controller's new lr is logged as ``lr_next``.
    """
    # measurements run extra forward passes; under fork_rng their dropout draws leave the
    # training run's global RNG stream exactly as it would be without them
    with torch.random.fork_rng(devices=[]):
        if controller is not None and controller.due_curvature(step):
            controller.track_curvature(model, loss_fn, xb, yb, step=step)
            lr = controller.lr
        if not monitor.due(step):
            return lr
        m = monitor.measure(model, loss_fn, xb, yb, step=step, lr=lr, epoch=epoch)
    if controller is not None:
        new = controller.update(m, total_steps=total_steps)
        m = replace(m, target_temperature=controller.target(step, total_steps=total_steps), lr_next=new, lambda_max=controller.lambda_max)
        lr = new
    monitor.emit(m)
    return lr
