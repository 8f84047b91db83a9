r"""Gradient-noise estimates from one minibatch: $\mathrm{tr}\,C$, $|G|^2$ and their errors.

Two estimators, both unbiased for samples drawn independently from the data (with replacement):

- ``"per-sample"``: per-sample gradients $g_1..g_B$ by ``vmap(grad)`` at the current parameters,
  $\widehat{\mathrm{tr}\,C} = \frac{1}{B-1}\sum_i |g_i - \bar g|^2$ and
  $\widehat{|G|^2} = |\bar g|^2 - \widehat{\mathrm{tr}\,C}/B$ (since $E|\bar g|^2 = |G|^2 + \mathrm{tr}\,C/B$).
- ``"micro-batch"``: the batch is cut into $K$ micro-batches of $b$ samples whose mean gradients
  $G_k$ have covariance $C/b$, so $\widehat{\mathrm{tr}\,C} = \frac{b}{K-1}\sum_k |G_k - \bar G|^2$
  and $\widehat{|G|^2} = |\bar G|^2 - \widehat{\mathrm{tr}\,C}/(Kb)$. This works for any model,
  including BatchNorm in train mode, where per-sample gradients are not defined.

The standard error of $\widehat{\mathrm{tr}\,C}$ is estimated from the spread of the $m$ terms
$d_j = |g_j - \bar g|^2$ ($m = B$ or $K$): $\mathrm{se} = s\,\sqrt m\,\nu / (m - 1)$ with $s$ the
sample standard deviation of the $d_j$ and $\nu = 1$ (per-sample) or $b$ (micro-batch). With
$m = K$ small it is itself rough (relative error about $1/\sqrt{2(K-1)}$) and biased low: at
$K = 8$ it averaged 0.73-0.84 of the real spread of the estimates (tests/train/test_estimators.py);
per-sample (m = B = 64) within 5%.

References:
    McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training",
    arXiv:1812.06162, Appendix A (unbiased $|G|^2$ and $\mathrm{tr}\,C$ from two batch sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from permsym._errors import check_positive_int
from permsym.curvature.functional import LossFn

__all__ = ["ESTIMATORS", "BatchNoise", "batch_noise", "needs_micro_batches"]

ESTIMATORS = ("auto", "per-sample", "micro-batch")


@dataclass(frozen=True)
class BatchNoise:
    """Noise estimates from one minibatch (float64 arithmetic)."""

    trace_C: float
    trace_C_stderr: float
    grad_norm_sq: float
    loss: float
    batch_size: int
    num_params: int
    method: str

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_C": self.trace_C,
            "trace_C_stderr": self.trace_C_stderr,
            "grad_norm_sq": self.grad_norm_sq,
            "loss": self.loss,
            "batch_size": self.batch_size,
            "num_params": self.num_params,
            "method": self.method,
        }


def needs_micro_batches(model: nn.Module) -> bool:
    """True if per-sample gradients are not meaningful: BatchNorm or active Dropout in the model."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            return True
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            return True
    return False


def _split(model: nn.Module) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Trainable parameter names, their detached values, and everything else (cloned buffers)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    # clones: BatchNorm in train mode updates running statistics in place; the model must not change
    frozen.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return names, params, frozen


def _terms_stats(d: torch.Tensor, scale: float) -> tuple[float, float]:
    m = d.numel()
    estimate = scale * float(d.sum()) / (m - 1)
    stderr = scale * float(d.std(unbiased=True)) * math.sqrt(m) / (m - 1) if m > 2 else math.inf
    return estimate, stderr


def _per_sample(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor) -> BatchNoise:
    names, params, frozen = _split(model)

    def loss1(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, {**p, **frozen}, (x.unsqueeze(0),)), t.unsqueeze(0))

    grads, losses = vmap(grad_and_value(loss1), in_dims=(None, 0, 0))(params, X, y)
    G = torch.cat([grads[n].reshape(X.shape[0], -1) for n in names], dim=1).to(torch.float64)
    B, P = G.shape
    gbar = G.mean(0)
    d = ((G - gbar) ** 2).sum(1)
    trace, stderr = _terms_stats(d, 1.0)
    return BatchNoise(
        trace_C=trace, trace_C_stderr=stderr, grad_norm_sq=float(gbar @ gbar) - trace / B,
        loss=float(losses.double().mean()), batch_size=B, num_params=P, method="per-sample",
    )


def _micro_batch(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, micro_batches: int) -> BatchNoise:
    names, params, frozen = _split(model)
    K = micro_batches
    b = X.shape[0] // K

    # plain autograd (not torch.func): BatchNorm updates its (cloned) running statistics in place
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    rows, losses = [], []
    for k in range(K):
        out = functional_call(model, {**leaves, **frozen}, (X[k * b : (k + 1) * b],))
        value = loss_fn(out, y[k * b : (k + 1) * b])
        g = torch.autograd.grad(value, [leaves[n] for n in names])
        rows.append(torch.cat([t.reshape(-1) for t in g]).to(torch.float64))
        losses.append(float(value.detach()))
    G = torch.stack(rows)
    Gbar = G.mean(0)
    d = ((G - Gbar) ** 2).sum(1)
    trace, stderr = _terms_stats(d, float(b))
    return BatchNoise(
        trace_C=trace, trace_C_stderr=stderr, grad_norm_sq=float(Gbar @ Gbar) - trace / (K * b),
        loss=sum(losses) / K, batch_size=K * b, num_params=G.shape[1], method="micro-batch",
    )


def batch_noise(
    model: nn.Module,
    loss_fn: LossFn,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "auto",
    micro_batches: int = 4,
) -> BatchNoise:
    r"""Estimate $\mathrm{tr}\,C$ and $|G|^2$ at the model's current parameters from ``(X, y)``.

    The model is evaluated in its current mode and is not changed (BatchNorm statistics are
    updated on copies). See the module docstring for the estimators.

    Args:
        method: ``"per-sample"``, ``"micro-batch"`` or ``"auto"`` (micro-batches when the model
            has BatchNorm or Dropout in train mode, per-sample gradients otherwise).
        micro_batches: $K \ge 2$; the batch is cut into $K$ equal parts (a remainder is left out).

    Examples:
        >>> import permsym, torch.nn.functional as F
        >>> model = permsym.build("mlp:3-4-1")
        >>> X, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> noise = batch_noise(model, F.mse_loss, X, y)
        >>> noise.method, noise.batch_size, noise.num_params
        ('per-sample', 8, 21)
    """
    if method not in ESTIMATORS:
        raise ValueError(f"batch_noise: method must be one of {', '.join(ESTIMATORS)}; got {method!r}.")
    check_positive_int("batch_noise", "micro_batches", micro_batches)
    if method == "auto":
        method = "micro-batch" if needs_micro_batches(model) else "per-sample"
    B = int(X.shape[0])
    if method == "per-sample":
        if B < 2:
            raise ValueError(f"batch_noise: the batch must have at least 2 samples; got {B}.")
        return _per_sample(model, loss_fn, X, y)
    if micro_batches < 2 or B < micro_batches:
        raise ValueError(
            f"batch_noise: micro-batch estimation needs 2 <= micro_batches <= batch size; got "
            f"micro_batches={micro_batches} for a batch of {B}."
        )
    return _micro_batch(model, loss_fn, X, y, micro_batches)
