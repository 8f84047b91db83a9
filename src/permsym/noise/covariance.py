r"""Gradient noise: the per-sample gradient covariance $C$ and the SGD temperature.

$C = \frac1N \sum_i (g_i - \bar g)(g_i - \bar g)^\top$, so $\mathrm{tr}\,C = \frac1N\sum_i |g_i|^2
- |\bar g|^2$. A minibatch of $B$ samples drawn with replacement has gradient noise covariance
$C/B$. Reported: the noise scale $\mathrm{tr}\,C / |\bar g|^2$ (McCandlish et al. 2018, "simple"
noise scale) and the temperature $T = \eta\,\mathrm{tr}\,C / (2 B P)$ (the per-parameter
$\eta s^2 / (2B)$ of the isotropic case $C = s^2 I$).

References:
    McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training", arXiv:1812.06162.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from permsym._errors import check_positive_int
from permsym._threads import limited_threads
from permsym.curvature.functional import FlatLoss, LossFn
from permsym.noise import outer
from permsym.noise.per_sample import _iter_gradient_dicts, iter_per_sample_gradients

__all__ = ["GradientNoise", "gradient_covariance", "gradient_noise"]

_DENSE_LIMIT = 10_000


@dataclass(frozen=True, eq=False)
class GradientNoise:
    """Gradient-noise statistics at one parameter point."""

    trace_C: float
    grad_norm_sq: float
    noise_scale: float
    temperature: float
    num_params: int
    num_samples: int
    batch_size: int
    lr: float
    covariance: torch.Tensor | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {
            "trace_C": self.trace_C,
            "grad_norm_sq": self.grad_norm_sq,
            "noise_scale": self.noise_scale,
            "temperature": self.temperature,
            "num_params": self.num_params,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "lr": self.lr,
        }
        if self.covariance is not None:
            out["covariance"] = self.covariance.tolist()
        return out


class _Welford:
    r"""Streaming mean and total squared deviation $M_2 = \sum_i |g_i - \bar g|^2$ (Chan et al.).

    Each chunk is centred on its own mean before squaring, and chunks are merged with
    $M_2 \leftarrow M_2 + M_{2,c} + |\bar g_c - \bar g|^2 n n_c / (n + n_c)$: no
    $\overline{|g|^2} - |\bar g|^2$ difference, so a gradient mean far larger than its noise does
    not cancel $\mathrm{tr}\,C$ away.
    """

    def __init__(self, size: int, device: torch.device | None = None) -> None:
        self.n = 0
        self.mean = torch.zeros(size, dtype=torch.float64, device=device)
        self.m2 = 0.0

    def add(self, g: torch.Tensor, offset: int, n_before: int) -> None:
        """Merge a ``(c, k)`` block of coordinates ``offset:offset+k`` (chunk of ``c`` samples)."""
        c, k = g.shape
        chunk_mean = g.sum(0).to(torch.float64) / c
        centred = g - chunk_mean.to(g.dtype)
        m2_chunk = float(torch.linalg.vector_norm(centred, dim=1).to(torch.float64).square().sum())
        mean = self.mean[offset : offset + k]
        delta = chunk_mean - mean
        total = n_before + c
        self.m2 += m2_chunk + float(delta @ delta) * n_before * c / total
        mean += delta * (c / total)


def _moments(
    flat: FlatLoss, subspace: torch.Tensor | None, dense: bool, chunk_size: int | None
) -> tuple[float, torch.Tensor, torch.Tensor | None, int]:
    """Stream per-sample gradients: (tr C, gbar, covariance or None, N), C the population covariance."""
    N = flat.X.shape[0]
    stats = _Welford(flat.num_params, flat.theta.device)
    second = None
    V = None if subspace is None else subspace.to(device=flat.theta.device, dtype=torch.float64)
    # Reductions run in the gradients' own dtype and are accumulated in float64: a float64 copy
    # of every chunk cost ~10x the per-sample gradients themselves.
    if V is None and not dense and outer.applies(flat):  # plain MLP: norms from the factors
        total_sq, gsum = outer.moments(flat)
        gbar = gsum / N
        return max(total_sq / N - float(gbar @ gbar), 0.0), gbar, None, N
    if V is None and not dense:  # moments only: reduce each parameter's block, no (c, P) matrix
        for _, grads in _iter_gradient_dicts(flat, chunk_size):
            offset, c = 0, None
            for name, k in zip(flat.names, flat.numels, strict=True):
                g = grads[name].reshape(grads[name].shape[0], -1)
                c = g.shape[0]
                stats.add(g, offset, stats.n)
                offset += k
            stats.n += c or 0
    else:
        for G in iter_per_sample_gradients(flat, chunk_size=chunk_size):
            stats.add(G, 0, stats.n)
            stats.n += G.shape[0]
            G = G.to(torch.float64)
            Z = G if V is None else G @ V
            second = Z.T @ Z if second is None else second + Z.T @ Z
    gbar = stats.mean
    cov = None
    if second is not None:
        mean = gbar if V is None else V.T @ gbar
        cov = second / N - torch.outer(mean, mean)
        cov = 0.5 * (cov + cov.T)
    return stats.m2 / N, gbar, cov, N


def _check_subspace(subspace: torch.Tensor | None, P: int, call: str) -> None:
    if subspace is not None and (subspace.ndim != 2 or subspace.shape[0] != P):
        raise ValueError(
            f"{call}: subspace must be a (P, k) matrix of directions with P = {P}; got shape {tuple(subspace.shape)}."
        )


def gradient_covariance(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    subspace: torch.Tensor | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    r"""$C$ (dense, $P \times P$, small models) or $V^\top C V$ for a ``(P, k)`` ``subspace`` $V$ (float64)."""
    with limited_threads(torch_threads=threads):
        flat = FlatLoss(model, loss_fn, data)
        P = flat.num_params
        _check_subspace(subspace, P, "gradient_covariance")
        if subspace is None and P > _DENSE_LIMIT:
            raise ValueError(
                f"gradient_covariance: the model must have at most {_DENSE_LIMIT} parameters for a dense C; "
                f"got {P}. Pass subspace=V (a (P, k) matrix of directions)."
            )
        _, _, cov, _ = _moments(flat, subspace, subspace is None, chunk_size)
    assert cov is not None
    return cov


def gradient_noise(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    batch_size: int,
    lr: float,
    dense: bool = False,
    subspace: torch.Tensor | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
) -> GradientNoise:
    r"""$\mathrm{tr}\,C$, $|\bar g|^2$, noise scale and temperature $T = \eta\,\mathrm{tr}\,C/(2BP)$.

    With ``dense=True`` (small models) or a ``subspace`` the result also holds $C$ or $V^\top C V$.
    Plain MLPs without ``dense``/``subspace``: $|g_i|^2$ and $\bar g$ from each layer's inputs and
    output gradients (:mod:`permsym.noise.outer`), no per-sample gradient is formed and
    ``chunk_size`` is not used. Otherwise per-sample gradients are streamed ``chunk_size``
    samples at a time (``None``: about 32 MiB of gradients per chunk); the ``(N, P)`` matrix is
    never formed.
    """
    check_positive_int("gradient_noise", "batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"gradient_noise: lr must be > 0; got {lr!r}.")
    with limited_threads(torch_threads=threads):
        flat = FlatLoss(model, loss_fn, data)
        P = flat.num_params
        _check_subspace(subspace, P, "gradient_noise")
        trace_C, gbar, cov, N = _moments(flat, subspace, dense, chunk_size)
    g2 = float(gbar @ gbar)
    return GradientNoise(
        trace_C=trace_C,
        grad_norm_sq=g2,
        noise_scale=trace_C / g2 if g2 > 0 else float("inf"),
        temperature=lr * trace_C / (2 * batch_size * P),
        num_params=P,
        num_samples=N,
        batch_size=batch_size,
        lr=float(lr),
        covariance=cov,
    )
