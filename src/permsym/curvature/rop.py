r"""Exact Hessian-vector products for plain MLPs by Pearlmutter's R-operator, written out.

For an ``nn.Sequential`` of ``Linear`` / ``MaskedLinear`` layers and element-wise activations
with a mean cross-entropy or mean squared-error loss, $Hv = \mathcal{R}_v\{\nabla J\}$ follows
from one forward and one backward pass cached per data chunk, then per product (rows are
samples, $a$ a layer's input, $z$ its output, $g = \partial J / \partial z$, $R(\cdot)$ the
directional derivative along $v = (V_l, c_l)$):

- forward, Linear: $R z = R a\,W^\top + a V^\top + c$; activation: $R z = \sigma'(u) \odot R u$;
- loss: cross-entropy $R g_L = (p \odot R z_L - p\,(p^\top R z_L)) / n$ per row
  ($p$ = softmax), squared error $R g_L = 2 R z_L / (n K)$;
- backward, Linear: $R g_a = R g\,W + g V$, $(Hv)_W = R g^\top a + g^\top R a$,
  $(Hv)_b = \sum_{\text{rows}} R g$; activation: $R g_u = \sigma'(u) \odot R g + \sigma''(u) \odot R u \odot g$.

That is six GEMMs per hidden layer, as autograd's double backward, but without its graph
bookkeeping and extra element-wise passes: 7.7 ms against 9.8 ms (``"revrev"``) for
``mlp:64-256-256-10`` on 2048 samples (benchmarks/bench_curvature.py, RESULTS.md). Masks enter as
$W \odot B$, $V \odot B$ and a masked weight block of $Hv$. Anything else (other layers,
losses, soft labels, inputs that are not ``(n, features)``) is not supported:
:func:`supports` says why, and the operator falls back to ``"revrev"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from permsym.curvature.functional import _mse
from permsym.layers.masked_linear import MaskedLinear

__all__ = ["RopChunk", "activation_derivatives", "supports"]

_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Identity)


def supports(module: nn.Module, loss_fn: Callable, X: torch.Tensor, y: torch.Tensor) -> str | None:
    """``None`` if the written-out R-operator applies, else the reason it does not."""
    if not isinstance(module, nn.Sequential):
        return f"the model is a {type(module).__name__}, not an nn.Sequential"
    names = [n for n, _ in module.named_parameters()]
    expected: list[str] = []
    for name, layer in module.named_children():
        if type(layer) in (nn.Linear, MaskedLinear):
            expected += [f"{name}.weight"] + ([f"{name}.bias"] if layer.bias is not None else [])
        elif isinstance(layer, nn.GELU) and layer.approximate != "none":
            return "GELU(approximate='tanh') is not supported"
        elif type(layer) not in _ACTIVATIONS:
            return f"layer {name!r} ({type(layer).__name__}) is not Linear or an element-wise activation"
        elif getattr(layer, "inplace", False):  # it would overwrite the cached input sigma'(u) needs
            return f"layer {name!r} is an in-place activation"
    if names != expected:
        return "parameters are shared or not in layer order"
    if not any(type(layer) in (nn.Linear, MaskedLinear) for layer in module):
        return "the model has no Linear layer"
    if X.ndim != 2:
        return f"inputs must be (n, features); got shape {tuple(X.shape)}"
    kind = _loss_kind(loss_fn, y)
    if kind is None:
        return "the loss is not mean cross-entropy on class indices or mean squared error"
    width = [layer.out_features for layer in module if isinstance(layer, nn.Linear)][-1]
    if kind == "mse" and tuple(y.shape) != (X.shape[0], width):
        return f"targets must have the output's shape ({X.shape[0]}, {width}); got {tuple(y.shape)}"
    if kind == "ce" and y.numel() and not (0 <= int(y.min()) and int(y.max()) < width):
        # F.cross_entropy skips ignore_index (-100) targets; anything outside [0, C) falls back
        return f"class labels must lie in [0, {width}); got [{int(y.min())}, {int(y.max())}]"
    return None


def _loss_kind(loss_fn: Callable, y: torch.Tensor) -> str | None:
    if loss_fn is F.cross_entropy and y.dtype == torch.long and y.ndim == 1:
        return "ce"
    if loss_fn is _mse or loss_fn is F.mse_loss:  # FlatLoss replaces F.mse_loss by its _mse
        return "mse"
    return None


def activation_derivatives(layer: nn.Module, u: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""$\sigma'(u)$ and $\sigma''(u)$ (``None`` where it is zero), given $u$ and $\sigma(u)$."""
    if isinstance(layer, nn.Tanh):
        d1 = 1 - out * out
        return d1, -2 * out * d1
    if isinstance(layer, nn.ReLU):
        return (u > 0).to(u.dtype), None
    if isinstance(layer, nn.Sigmoid):
        d1 = out * (1 - out)
        return d1, d1 * (1 - 2 * out)
    if isinstance(layer, nn.SiLU):
        s = torch.sigmoid(u)
        return s * (1 + u * (1 - s)), s * (1 - s) * (2 + u * (1 - 2 * s))
    if isinstance(layer, nn.GELU):
        pdf = torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
        return cdf + u * pdf, pdf * (2 - u * u)
    return torch.ones_like(u), None  # Identity


class RopChunk:
    """$v \\mapsto w\\,H_c v$ on one data chunk (mean loss ``weight`` times the chunk's Hessian)."""

    def __init__(self, module: nn.Sequential, params: dict[str, torch.Tensor], X: torch.Tensor,
                 y: torch.Tensor, loss_fn: Callable, weight: float) -> None:
        self.kind = _loss_kind(loss_fn, y)
        self.weight = weight
        self.layers: list[tuple[str, nn.Module]] = list(module.named_children())
        self.params = params
        with torch.no_grad():
            inputs, a = [], X
            for _, layer in self.layers:
                inputs.append(a)
                a = layer(a)
            self.inputs, self.output = inputs, a
            n = X.shape[0]
            if self.kind == "ce":
                self.probs = torch.softmax(a, dim=1)
                g = self.probs.clone()
                g[torch.arange(n, device=g.device), y] -= 1
                g /= n
            else:
                g = 2 * (a - y) / a.numel()
            self.scale = 2 / a.numel() if self.kind == "mse" else 1 / n
            # gradients w.r.t. every layer's output, and sigma', sigma'' of the activations
            self.grads: list[torch.Tensor] = [g] * len(self.layers)
            # (sigma'(u), sigma''(u) * g_out) per activation: both fixed for the chunk
            self.derivs: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(self.layers)
            self.weights = {i: self._weight(name, layer, params) for i, (name, layer) in enumerate(self.layers)
                            if isinstance(layer, nn.Linear)}
            self.workspace: dict = {}
            for i in range(len(self.layers) - 1, -1, -1):
                name, layer = self.layers[i]
                self.grads[i] = g
                if isinstance(layer, nn.Linear):
                    if i > 0:
                        g = g @ self.weights[i]
                else:
                    d1, d2 = activation_derivatives(layer, self.inputs[i], self.inputs[i + 1] if i + 1 < len(self.layers) else a)
                    self.derivs[i] = (d1, None if d2 is None else d2 * g)
                    g = g * d1

    @staticmethod
    def _weight(name: str, layer: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        W = tensors[f"{name}.weight"]
        return W * layer.mask if isinstance(layer, MaskedLinear) else W

    def _buffer(self, key: tuple, shape: tuple[int, ...]) -> torch.Tensor:
        """A work tensor reused across products (fresh multi-MiB tensors are page-faulted anew
        on every product, which cost more than the element-wise arithmetic itself)."""
        buf = self.workspace.get((key, shape))
        if buf is None:
            buf = self.workspace[(key, shape)] = torch.empty(shape, dtype=self.output.dtype, device=self.output.device)
        return buf

    def __call__(self, v: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
        """Add ``weight`` * H v into ``out`` (tensors keyed like the parameters)."""
        ra: torch.Tensor | None = None  # R of the current layer's input; None means 0
        r_inputs: list[torch.Tensor | None] = []
        for i, (name, layer) in enumerate(self.layers):
            r_inputs.append(ra)
            if isinstance(layer, nn.Linear):
                rz = self._buffer(("rz", i), (self.inputs[i].shape[0], layer.out_features))
                torch.mm(self.inputs[i], self._weight(name, layer, v).T, out=rz)
                if ra is not None:
                    rz.addmm_(ra, self.weights[i].T)
                if layer.bias is not None:
                    rz += v[f"{name}.bias"]
                ra = rz
            elif ra is not None:
                ra = torch.mul(ra, self.derivs[i][0], out=self._buffer(("ru", i), tuple(ra.shape)))
        assert ra is not None, "the model has no Linear layer"
        rg = self._buffer(("rg", len(self.layers)), tuple(ra.shape))
        if self.kind == "ce":
            p = self.probs
            torch.mul(p, ra, out=rg)
            rg.addcmul_(p, rg.sum(dim=1, keepdim=True), value=-1.0).mul_(self.scale)
        else:
            torch.mul(ra, self.scale, out=rg)
        w = self.weight
        for i in range(len(self.layers) - 1, -1, -1):
            name, layer = self.layers[i]
            g, rin = self.grads[i], r_inputs[i]
            if isinstance(layer, nn.Linear):
                hw = out[f"{name}.weight"]
                if isinstance(layer, MaskedLinear):
                    hw_full = self._buffer(("hw", i), tuple(hw.shape))
                    torch.mm(rg.T, self.inputs[i], out=hw_full)
                    if rin is not None:
                        hw_full.addmm_(g.T, rin)
                    hw.addcmul_(hw_full, layer.mask, value=w)
                else:
                    hw.addmm_(rg.T, self.inputs[i], alpha=w)
                    if rin is not None:
                        hw.addmm_(g.T, rin, alpha=w)
                if layer.bias is not None:
                    out[f"{name}.bias"].add_(rg.sum(dim=0), alpha=w)
                if rin is None:
                    break  # nothing below depends on v through this layer's input
                nxt = self._buffer(("rg", i), tuple(rin.shape))
                torch.mm(rg, self.weights[i], out=nxt)
                rg = nxt.addmm_(g, self._weight(name, layer, v))
            else:
                d1, d2g = self.derivs[i]
                nxt = self._buffer(("rg", i), tuple(rg.shape))
                torch.mul(rg, d1, out=nxt)
                if d2g is not None and rin is not None:
                    nxt.addcmul_(d2g, rin)
                rg = nxt
