r"""Activation matching: assignment on the cross-correlation of unit activations.

The activations of a group are captured with forward hooks at the layer that produces its
units (a Linear or Conv whose output rows are members of the group), followed through the
element-wise modules applied next (normalisation, activation), so that post-activation
values are compared. For every unit pair,

$$\rho[i, j] = \frac{1}{N} \sum_t z^A_{ti} z^B_{tj}, \qquad z = (x - \bar x)/\sigma_x ,$$

over the $N$ samples (and spatial positions for convolutions); a group produced by several
layers (a residual stream) sums the correlations of its producers. Each group is then one
linear assignment maximising $\sum_i \rho[i, \pi(i)]$.

References:
    Ainsworth, Hayase, Srinivasa, "Git Re-Basin", ICLR 2023 (arXiv:2209.04836), Sec. 3.1.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from permsym._errors import PermsymError
from permsym.alignment._units import Layout, mask_admissible

__all__ = ["capture_activations", "correlation", "match_activations"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FOLLOW = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.Dropout)


def _follows(mod: nn.Module) -> bool:
    from permsym.symmetry.trace import ELEMENTWISE_MODULES

    return isinstance(mod, (*_FOLLOW, *ELEMENTWISE_MODULES)) or bool(getattr(mod, "permsym_elementwise", False))


def _producers(model: nn.Module, lay: Layout) -> dict[int, list[str]]:
    modules = dict(model.named_modules())
    out: dict[int, list[str]] = {}
    for gi, group in enumerate(lay.structure.groups):
        for m in group.members:
            owner, _, pname = m.name.rpartition(".")
            mod = modules.get(owner)
            if pname == "weight" and m.axis == 0 and isinstance(mod, (nn.Linear, *_CONV)):
                out.setdefault(gi, []).append(owner)
    return out


def capture_activations(model: nn.Module, x: torch.Tensor, lay: Layout) -> dict[int, list[torch.Tensor]]:
    """``{group: [(samples, units) tensors]}``: post-activation values at each producing layer.

    The model runs once in eval mode under ``no_grad`` (its training flags are restored).

    Raises:
        PermsymError: if no layer producing a group's units is found.
    """
    producers = _producers(model, lay)
    for gi, group in enumerate(lay.structure.groups):
        if gi not in producers:
            raise PermsymError(f"align(method='activation'): no Linear or Conv layer produces the units of "
                               f"group {group.name!r}; use method='weight'.")
    calls: list[tuple[str, nn.Module, torch.Tensor | None, torch.Tensor]] = []

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if isinstance(output, torch.Tensor):
                calls.append((name, mod, first, output))
        return record

    handles = [mod.register_forward_hook(hook(name)) for name, mod in model.named_modules() if name]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x.to(next(model.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    out: dict[int, list[torch.Tensor]] = {}
    for gi, names in producers.items():
        n = lay.structure.groups[gi].size
        for name in names:
            idx = next(k for k, c in enumerate(calls) if c[0] == name)
            value, conv = calls[idx][3], isinstance(calls[idx][1], _CONV)
            for _, mod, inp, output in calls[idx + 1 :]:
                if inp is value and _follows(mod):
                    value = output
            unit_axis = 1 if conv else value.ndim - 1
            rows = value.movedim(unit_axis, -1).reshape(-1, n)
            out.setdefault(gi, []).append(rows)
    return out


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""$\rho[i, j]$: Pearson correlation of column $i$ of ``a`` with column $j$ of ``b`` (0 for constant columns).

    Examples:
        >>> x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 5.0]], dtype=torch.float64)
        >>> correlation(x, x.flip(1)).diagonal().round(decimals=3)
        tensor([0.7560, 0.7560], dtype=torch.float64)
    """
    a, b = a.double(), b.double()
    za = a - a.mean(0)
    zb = b - b.mean(0)
    sa, sb = za.norm(dim=0), zb.norm(dim=0)
    za = torch.where(sa > 0, za / sa.clamp_min(1e-300), 0.0)
    zb = torch.where(sb > 0, zb / sb.clamp_min(1e-300), 0.0)
    return za.T @ zb


def match_activations(
    model_a: nn.Module, model_b: nn.Module, x: torch.Tensor, lay: Layout,
    sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor],
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One assignment per group on the summed activation correlations; masks restrict pairs."""
    acts_a = capture_activations(model_a, x, lay)
    acts_b = capture_activations(model_b, x, lay)
    perms = [torch.arange(n) for n in lay.sizes]
    sims: dict[str, torch.Tensor] = {}
    for gi, group in enumerate(lay.structure.groups):
        rho = sum(correlation(a, b) for a, b in zip(acts_a[gi], acts_b[gi], strict=True))
        rho = (rho / len(acts_a[gi])).cpu().numpy()
        allowed = mask_admissible(sa, sb, lay, gi, perms) if lay.is_masked(gi) else None
        score = rho if allowed is None else np.where(allowed, rho, -np.inf)
        rows, cols = linear_sum_assignment(score, maximize=True)
        perm = cols[np.argsort(rows)]
        perms[gi] = torch.as_tensor(perm, dtype=torch.long)
        sims[group.name] = torch.as_tensor(rho[np.arange(group.size), perm])
    return perms, sims
