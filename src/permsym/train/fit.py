"""A plain, deterministic minibatch SGD training loop.

Shuffling comes from a private ``torch.Generator`` seeded with ``seed`` (the global RNG is
never touched), so on the CPU the same seed gives the same parameters bit for bit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from permsym._errors import PermsymError, check_positive_int
from permsym.curvature.functional import LossFn, as_data

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
) -> History:
    r"""Train ``model`` in place by SGD, $\theta \leftarrow \theta - \eta \nabla \hat J_B(\theta)$, over shuffled epochs.

    Args:
        model: trained in place (train mode during the run, restored afterwards).
        data: ``(X, y)`` or a Dataset; ``loss_fn`` defaults to mse (float targets) or
            cross-entropy (integer labels).
        on_epoch: ``on_epoch(epoch, mean_loss)`` after every finished epoch (e.g. save a checkpoint).

    Raises:
        TrainingDiverged: on a non-finite loss; the model is reset to the last finished epoch.
    """
    import torch.nn.functional as F

    check_positive_int("fit", "epochs", epochs)
    check_positive_int("fit", "batch_size", batch_size)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"fit: lr must be a finite number > 0; got {lr!r}.")
    X, y = as_data(data)
    dtype = next(model.parameters()).dtype
    X = X.to(dtype)
    if y.is_floating_point():
        y = y.to(dtype)
    loss_fn = loss_fn or (F.mse_loss if y.is_floating_point() else F.cross_entropy)
    n = X.shape[0]
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.train()
    losses: list[float] = []
    steps = 0
    try:
        for epoch in range(1, epochs + 1):
            good = copy.deepcopy(model.state_dict())
            perm = torch.randperm(n, generator=generator)
            total, count = 0.0, 0
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                loss = loss_fn(model(X[idx]), y[idx])
                if not torch.isfinite(loss):
                    model.load_state_dict(good)
                    raise TrainingDiverged(
                        f"fit: the training loss must stay finite; got {float(loss.detach())} at epoch {epoch}, "
                        f"step {steps + 1} (lr = {lr:g}). Parameters are reset to the end of epoch "
                        f"{epoch - 1}; use a smaller lr."
                    )
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        p.sub_(g, alpha=lr)
                total += float(loss.detach()) * idx.numel()
                count += idx.numel()
                steps += 1
            losses.append(total / count)
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
    finally:
        model.train(was_training)
    return History(losses=tuple(losses), steps=steps, seed=seed)
