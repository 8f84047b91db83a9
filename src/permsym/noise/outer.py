r"""Per-sample gradients of plain MLPs as outer products (no ``vmap``, no per-sample graphs).

For a Linear layer $z = a W^\top + b$ inside an ``nn.Sequential`` MLP (the models
:func:`permsym.curvature.rop.supports` accepts), sample $i$'s gradient is
$\nabla_W \ell_i = \delta_i a_i^\top$ and $\nabla_b \ell_i = \delta_i$, with $a_i$ the layer's
input and $\delta_i = \partial \ell_i / \partial z_i$ from one batched forward and backward:
$\delta_L$ = softmax $-$ one-hot (cross-entropy) or $2(z - y)/K$ (squared error, mean over $K$
outputs), then $\delta \leftarrow (\delta W) \odot \sigma'(u)$ down the layers. Masked layers
multiply by their mask $B$. The squared norms need no gradient at all:
$|\nabla_W \ell_i|^2 = |\delta_i|^2 |a_i|^2$, or $\sum_{jk} \delta_{ij}^2 B_{jk} a_{ik}^2$ with a mask
(the trick BackPACK's ``BatchL2Grad`` uses).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from permsym.curvature.functional import FlatLoss
from permsym.curvature.rop import activation_derivatives, supports
from permsym.layers.masked_linear import MaskedLinear

__all__ = ["LayerFactors", "applies", "layer_factors", "write_per_sample_gradients"]

# samples per block of factors (a and delta are (block, width) per layer: small next to (N, P))
_BLOCK = 8192

LayerFactors = list[tuple[str, nn.Linear, torch.Tensor, torch.Tensor]]


def applies(flat: FlatLoss) -> bool:
    """Whether the outer-product path computes this model's per-sample gradients."""
    return supports(flat.module, flat.loss_fn, flat.X, flat.y) is None


def layer_factors(flat: FlatLoss, X: torch.Tensor, y: torch.Tensor) -> LayerFactors:
    r"""``[(name, layer, a, delta)]`` per Linear layer: inputs $a$ (n, in) and per-sample
    output gradients $\delta$ (n, out) of the per-sample losses on ``(X, y)``."""
    layers = list(flat.module.named_children())
    with torch.no_grad():
        inputs, a = [], X
        for _, layer in layers:
            inputs.append(a)
            a = layer(a)
        if y.is_floating_point():  # squared error, mean over the K outputs of one sample
            delta = 2 * (a - y) / a.shape[1]
        else:
            delta = torch.softmax(a, dim=1)
            delta[torch.arange(a.shape[0], device=a.device), y] -= 1
        out: LayerFactors = []
        for i in range(len(layers) - 1, -1, -1):
            name, layer = layers[i]
            if isinstance(layer, nn.Linear):
                out.append((name, layer, inputs[i], delta))
                if i > 0:
                    W = layer.weight * layer.mask if isinstance(layer, MaskedLinear) else layer.weight
                    delta = delta @ W
            else:
                nxt = inputs[i + 1] if i + 1 < len(layers) else a
                delta = delta * activation_derivatives(layer, inputs[i], nxt)[0]
    return out[::-1]


def blocks(flat: FlatLoss) -> Iterator[tuple[int, LayerFactors]]:
    """``(start, factors)`` for consecutive blocks of samples."""
    for s in range(0, flat.X.shape[0], _BLOCK):
        yield s, layer_factors(flat, flat.X[s : s + _BLOCK], flat.y[s : s + _BLOCK])


def write_per_sample_gradients(flat: FlatLoss, G: torch.Tensor) -> None:
    """Fill the ``(N, P)`` matrix ``G`` (columns ordered like ``flat.names``) in place."""
    offsets, offset = {}, 0
    for name, k in zip(flat.names, flat.numels, strict=True):
        offsets[name] = offset
        offset += k
    for s, factors in blocks(flat):
        for name, layer, a, delta in factors:
            c, o = delta.shape
            w0 = offsets[f"{name}.weight"]
            view = G[s : s + c, w0 : w0 + o * a.shape[1]].view(c, o, a.shape[1])
            torch.mul(delta[:, :, None], a[:, None, :], out=view)
            if isinstance(layer, MaskedLinear):
                view.mul_(layer.mask)
            if layer.bias is not None:
                b0 = offsets[f"{name}.bias"]
                G[s : s + c, b0 : b0 + o] = delta


def moments(flat: FlatLoss) -> tuple[float, torch.Tensor]:
    r"""$\sum_i |g_i|^2$ and $\sum_i g_i$ (float64, flat) from the factors, no per-sample gradient.

    Both in float64 from the model-dtype factors: the difference
    $\frac1N\sum_i |g_i|^2 - |\bar g|^2$ then cancels only at float64 precision.
    """
    total_sq = 0.0
    gsum = {n: torch.zeros(shape, dtype=torch.float64, device=flat.theta.device)
            for n, shape in zip(flat.names, flat.shapes, strict=True)}
    for _, factors in blocks(flat):
        for name, layer, a, delta in factors:
            a64, d64 = a.to(torch.float64), delta.to(torch.float64)
            d2 = d64.square()
            if isinstance(layer, MaskedLinear):
                mask = layer.mask.to(torch.float64)
                total_sq += float(((d2 @ mask) * a64.square()).sum())
                gsum[f"{name}.weight"] += (d64.T @ a64) * mask
            else:
                total_sq += float((d2.sum(1) * a64.square().sum(1)).sum())
                gsum[f"{name}.weight"] += d64.T @ a64
            if layer.bias is not None:
                total_sq += float(d2.sum())
                gsum[f"{name}.bias"] += d64.sum(0)
    return total_sq, torch.cat([gsum[n].reshape(-1) for n in flat.names])
