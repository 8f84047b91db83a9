"""Builders for the built-in families: mlp, convnet, resmlp (modular lives in layers)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from permsym._errors import PermsymError
from permsym.archs.activations import make_activation
from permsym.archs.grammar import ArchSpec, stream_seed


def _flat_dims(spec: ArchSpec) -> list[int]:
    if any(len(d) != 1 for d in spec.dims):
        raise PermsymError(
            f"{spec.family} takes plain sizes IN-...-OUT; got a shape in {spec.text!r}."
        )
    return [d[0] for d in spec.dims]


def build_mlp(spec: ArchSpec, generator: torch.Generator) -> nn.Module:
    """``mlp:IN-H1-...-OUT``: Linear layers with ``act`` between them.

    With ``density=RHO`` (< 1) every Linear is a :class:`~permsym.layers.MaskedLinear` whose
    fixed mask has about ``RHO`` of its entries set and no two identical rows (the paper's
    forced pre-pruning), drawn from ``mask_seed``.
    """
    from permsym.layers import MaskedLinear, distinct_mask

    dims = _flat_dims(spec)
    act, bias = spec.options["act"], spec.options["bias"]
    density = spec.options["density"]
    masked = density < 1.0
    mask_gen = torch.Generator().manual_seed(stream_seed(spec.options["mask_seed"], "masks"))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for k, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True), start=1):
        last = k == len(dims) - 1
        name = "out" if last else f"fc{k}"
        if masked:
            mask = distinct_mask(fan_out, fan_in, density, generator=mask_gen)
            layers[name] = MaskedLinear(fan_in, fan_out, mask, bias=bias, generator=generator)
        else:
            layers[name] = _linear(fan_in, fan_out, bias, generator)
        if not last:
            layers[f"act{k}"] = make_activation(act, fan_out)
    return nn.Sequential(layers)


def _linear(fan_in: int, fan_out: int, bias: bool, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default init drawn from ``generator`` (U(-1/sqrt(fan_in), +))."""
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _conv(c_in: int, c_out: int, generator: torch.Generator) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
    bound = 1.0 / math.sqrt(c_in * 9)
    with torch.no_grad():
        conv.weight.uniform_(-bound, bound, generator=generator)
    return conv


def build_convnet(spec: ArchSpec, generator: torch.Generator) -> nn.Module:
    """``convnet:CxHxW-C1-...-Ck-OUT``: [Conv3x3 -> BatchNorm2d -> act -> pool2] per Ck,
    then Flatten and a Linear head. Takes flat inputs of size C*H*W (digits: 1x8x8)."""
    shape = spec.dims[0]
    if len(shape) != 3 or any(len(d) != 1 for d in spec.dims[1:]):
        raise PermsymError(
            f"convnet needs an input shape CxHxW then channel counts and an output size; "
            f"got {spec.text!r} (e.g. 'convnet:1x8x8-16-32-10')."
        )
    channels = [d[0] for d in spec.dims[1:-1]]
    if not channels:
        raise PermsymError(f"convnet needs at least one conv layer; got {spec.text!r}.")
    c, h, w = shape
    pool = nn.MaxPool2d if spec.options["pool"] == "max" else nn.AvgPool2d
    layers: OrderedDict[str, nn.Module] = OrderedDict(unflatten=nn.Unflatten(1, shape))
    for k, c_out in enumerate(channels, start=1):
        layers[f"conv{k}"] = _conv(c, c_out, generator)
        layers[f"bn{k}"] = nn.BatchNorm2d(c_out)
        layers[f"act{k}"] = make_activation(spec.options["act"], c_out)
        if h >= 2 and w >= 2:
            layers[f"pool{k}"] = pool(2)
            h, w = h // 2, w // 2
        c = c_out
    layers["flatten"] = nn.Flatten()
    layers["out"] = _linear(c * h * w, spec.dims[-1][0], spec.options["bias"], generator)
    return nn.Sequential(layers)


class ResidualBlock(nn.Module):
    """Pre-norm residual block: ``x + fc2(act(fc1(LayerNorm(x))))``."""

    def __init__(self, width: int, hidden: int, act: str, generator: torch.Generator) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = _linear(width, hidden, True, generator)
        self.act = make_activation(act, hidden)
        self.fc2 = _linear(hidden, width, True, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class ResMLP(nn.Module):
    """``resmlp:IN-W-OUT,blocks=B,hidden=H``: embed, B residual blocks, LayerNorm, head.

    The residual stream (width W) is one permutation group shared by the embedding rows,
    every LayerNorm and every block's output rows; each block's hidden layer is its own group.
    """

    def __init__(self, spec: ArchSpec, generator: torch.Generator) -> None:
        super().__init__()
        dims = _flat_dims(spec)
        if len(dims) != 3:
            raise PermsymError(f"resmlp takes exactly IN-WIDTH-OUT; got {spec.text!r}.")
        n_in, width, n_out = dims
        hidden = spec.options["hidden"] or width
        self.embed = _linear(n_in, width, True, generator)
        self.blocks = nn.ModuleList(
            ResidualBlock(width, hidden, spec.options["act"], generator)
            for _ in range(spec.options["blocks"])
        )
        self.norm = nn.LayerNorm(width)
        self.out = _linear(width, n_out, True, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))
