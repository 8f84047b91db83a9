"""The loss as a function of one flat parameter vector, evaluated in data chunks.

Every curvature and noise routine works on a private copy of the model (eval mode, so
BatchNorm uses its running statistics and the loss is an average of per-sample losses) and a
flat vector ``theta``; ``functional_call`` maps it back to ``named_parameters()`` keys. The
user's model is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["FlatLoss", "as_data"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_data(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept ``(X, y)`` or a :class:`permsym.data.Dataset`; return ``(X, y)``."""
    if hasattr(data, "X") and hasattr(data, "y"):
        return data.X, data.y
    if isinstance(data, tuple | list) and len(data) == 2:
        X, y = data
        if isinstance(X, torch.Tensor) and isinstance(y, torch.Tensor):
            if X.shape[0] != y.shape[0]:
                raise ValueError(
                    f"data: X and y must have the same number of samples; got {X.shape[0]} and {y.shape[0]}."
                )
            return X, y
    raise TypeError(f"data must be a tuple (X, y) of tensors or a permsym.data.Dataset; got {type(data).__name__}.")


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.mse_loss`` (mean) written elementwise.

    torch 2.13's ``torch.func.linearize`` of ``grad(F.mse_loss(...))`` crashes the process
    (segmentation fault in the proxy-tensor trace); this form has the same value and derivatives.
    """
    return ((output - target) ** 2).mean()


class FlatLoss:
    r"""$J(\theta) = \sum_c \frac{n_c}{N} \ell_c(\theta)$ over data chunks $c$ (mean-reduced losses).

    Args:
        model: any ``nn.Module``; a deep copy in eval mode is used.
        loss_fn: ``loss_fn(output, target)`` with mean reduction.
        data: ``(X, y)`` or a Dataset.
        chunk_size: samples per chunk (``None``: all at once); bounds memory.
        dtype: floating dtype of the computation (default: the model's).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        chunk_size: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        X, y = as_data(data)
        params = list(model.parameters())
        if not params:
            raise ValueError("FlatLoss: model must have parameters; got none.")
        self.dtype = dtype or params[0].dtype
        self.trainable = [p.requires_grad for p in params]  # the user's choice, before the copy is frozen
        self.module = copy.deepcopy(model).to(self.dtype).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
            p.grad = None
        named = list(self.module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.buffers = {n: b.detach().clone() for n, b in self.module.named_buffers()}
        self.loss_fn = _mse if loss_fn is F.mse_loss else loss_fn
        device = self.theta.device  # data follows the model
        X = X.to(device=device, dtype=self.dtype)
        y = y.to(device=device, dtype=self.dtype) if y.is_floating_point() else y.to(device)
        self.X, self.y = X, y
        n = X.shape[0]
        if n == 0:
            raise ValueError("FlatLoss: data must have at least one sample; got 0.")
        size = n if chunk_size is None else max(1, int(chunk_size))
        self.chunks = [
            (X[s : s + size], y[s : s + size], min(size, n - s) / n) for s in range(0, n, size)
        ]

    @property
    def num_params(self) -> int:
        """$P$, the length of ``theta``."""
        return int(self.theta.numel())

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into tensors keyed like ``named_parameters()``."""
        out, offset = {}, 0
        for name, shape, k in zip(self.names, self.shapes, self.numels, strict=True):
            out[name] = flat[offset : offset + k].view(shape)
            offset += k
        return out

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unflatten`."""
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def forward(self, flat: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Model outputs at parameters ``flat``."""
        return functional_call(self.module, {**self.unflatten(flat), **self.buffers}, (X,))

    def chunk_loss(self, flat: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss on one chunk."""
        return self.loss_fn(self.forward(flat, X), y)

    def chunk_fn(self, X: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``theta -> loss`` on the chunk ``(X, y)``."""
        return lambda flat: self.chunk_loss(flat, X, y)

    def loss(self, flat: torch.Tensor | None = None) -> torch.Tensor:
        """Full-data mean loss $J(\\theta)$ (no graph)."""
        flat = self.theta if flat is None else flat
        with torch.no_grad():
            return sum(w * self.chunk_loss(flat, X, y) for X, y, w in self.chunks)  # type: ignore[return-value]

    def gradient(self, flat: torch.Tensor | None = None) -> torch.Tensor:
        r"""Full-data gradient $\nabla J(\theta)$."""
        flat = self.theta if flat is None else flat
        total = torch.zeros_like(flat)
        for X, y, w in self.chunks:
            total += w * torch.func.grad(self.chunk_fn(X, y))(flat)
        return total
