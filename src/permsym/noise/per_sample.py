r"""Per-sample gradients $g_i = \nabla_\theta \ell(f_\theta(x_i), y_i)$ with ``vmap(grad)``, chunked.

With mean-reduced losses the full-batch gradient is $\bar g = \frac1N \sum_i g_i$.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap

from permsym._threads import limited_threads
from permsym.curvature.functional import FlatLoss, LossFn

__all__ = ["iter_per_sample_gradients", "per_sample_gradients"]


def _single_loss(flat: FlatLoss) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss1(theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flat.loss_fn(flat.forward(theta, x.unsqueeze(0)), t.unsqueeze(0))

    return loss1


def iter_per_sample_gradients(flat: FlatLoss, *, chunk_size: int = 256) -> Iterator[torch.Tensor]:
    """Yield ``(c, P)`` blocks of per-sample gradients, ``chunk_size`` samples at a time."""
    per_sample = vmap(grad(_single_loss(flat)), in_dims=(None, 0, 0))
    X, y = flat.X, flat.y
    for s in range(0, X.shape[0], chunk_size):
        yield per_sample(flat.theta, X[s : s + chunk_size], y[s : s + chunk_size]).detach()


def per_sample_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    chunk_size: int = 256,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """The ``(N, P)`` matrix of per-sample gradients (columns ordered like ``named_parameters()``).

    Examples:
        >>> import permsym, torch.nn.functional as F
        >>> model = permsym.build("mlp:3-4-1")
        >>> G = per_sample_gradients(model, F.mse_loss, (torch.randn(5, 3), torch.randn(5, 1)))
        >>> G.shape
        torch.Size([5, 21])
    """
    with limited_threads(torch_threads=threads):
        flat = FlatLoss(model, loss_fn, data, dtype=dtype)
        return torch.cat(list(iter_per_sample_gradients(flat, chunk_size=chunk_size)))
