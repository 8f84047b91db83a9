"""``MaskedLinear``: a Linear layer with a fixed binary connection mask."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from permsym._errors import PermsymError


class MaskedLinear(nn.Linear):
    r"""$y = (W \odot B) x + b$ with a fixed binary mask $B$ stored as the buffer ``mask``.

    The gradient of ``weight`` is zero outside the mask, and the stored weight is kept zero
    there, so the parameters carry no hidden state. The mask is a buffer: it is saved in
    checkpoints and permuted with the units by :func:`permsym.apply_permutation`.
    Initialisation: $U(-1/\sqrt{n_i}, 1/\sqrt{n_i})$ with $n_i$ the kept inputs of row $i$.
    """

    mask: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mask: torch.Tensor,
        *,
        bias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if tuple(mask.shape) != (out_features, in_features):
            raise PermsymError(
                f"MaskedLinear({in_features}, {out_features}): mask must have shape "
                f"({out_features}, {in_features}); got {tuple(mask.shape)}."
            )
        self.register_buffer("mask", mask.to(self.weight.dtype))
        fan_in = self.mask.sum(1).clamp(min=1)
        bound = (1.0 / fan_in.sqrt()).unsqueeze(1)
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0, generator=generator).mul_(bound).mul_(self.mask)
            if self.bias is not None:
                self.bias.uniform_(-1.0, 1.0, generator=generator).mul_(1.0 / math.sqrt(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        density = float(self.mask.mean()) if self.mask.numel() else 0.0
        return f"{super().extra_repr()}, density={density:.3g}"
