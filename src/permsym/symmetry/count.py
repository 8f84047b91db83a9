"""Exact order of a model's permutation symmetry group, and the orbit of its parameters."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from permsym.symmetry.graph import (
    EXACT_BELOW,
    build_unit_graph,
    count_automorphisms,
    log10_automorphisms,
    log10_factorial,
    refine,
)
from permsym.symmetry.structure import Structure
from permsym.symmetry.trace import infer_structure

__all__ = ["SymmetryCount", "count_symmetries", "formula_log10_order", "log10_factorial"]


@dataclass(frozen=True)
class SymmetryCount:
    r"""Orders of symmetry groups, as log10.

    Attributes:
        log10_order: $\log_{10}|G|$, $G$ the permutations that keep the model's masks
            (graph automorphisms, inputs and outputs fixed); $\sum_k \log_{10} w_k!$ unmasked.
        order: $|G|$ as an exact integer when it is below $10^{30}$, else None.
        log10_order_unmasked: the plain formula $\sum_k \log_{10} w_k!$ (lgamma).
        log10_order_with_sign_flips: $\log_{10}|G| + \sum_{k\ odd} w_k \log_{10} 2$ where
            units pass only odd activations (tanh, identity), else None.
        log10_stabilizer: $\log_{10}|\mathrm{Stab}(\theta)|$: permutations that leave the
            parameters themselves unchanged (identical or dead units).
        log10_orbit: $\log_{10}(|G| / |\mathrm{Stab}(\theta)|)$, the distinct equivalent points.
        groups: one row per group (name, size, log10 size!, odd, distinct units at theta).
    """

    log10_order: float
    order: int | None
    log10_order_unmasked: float
    log10_order_with_sign_flips: float | None
    log10_stabilizer: float
    log10_orbit: float
    masked: bool
    groups: tuple[dict[str, Any], ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "log10_order": self.log10_order,
            "log10_order_unmasked": self.log10_order_unmasked,
            "log10_order_with_sign_flips": self.log10_order_with_sign_flips,
            "log10_stabilizer": self.log10_stabilizer,
            "log10_orbit": self.log10_orbit,
            "order": self.order,
            "masked": self.masked,
            "groups": list(self.groups),
            "seconds": self.seconds,
        }


def count_symmetries(model: nn.Module, example_input: torch.Tensor, *, structure: Structure | None = None) -> SymmetryCount:
    r"""Count the equivalent parameter points of ``model``.

    The group order with masks is the automorphism count of the layered unit graph
    (mask entries as edges, each input and output its own colour): colour refinement then
    igraph's BLISS (DESIGN.md 2.1). The orbit of the current parameters is
    $|G| / |\mathrm{Stab}(\theta)|$, with the stabiliser counted on the same graph whose
    edge and vertex colours are the parameter values themselves.

    A model with a ``to_masked_mlp()`` method (:class:`~permsym.layers.ModularMLP`) is
    counted on that equivalent masked network, which exposes exchanges of modules too.

    Examples:
        >>> import permsym
        >>> c = count_symmetries(permsym.build("mlp:4-3-2-2"), torch.zeros(1, 4))
        >>> round(10 ** c.log10_order)  # 3! * 2!
        12
    """
    start = time.perf_counter()
    if hasattr(model, "to_masked_mlp"):
        model = model.to_masked_mlp()
        structure = None
    if structure is None:
        structure = infer_structure(model, example_input)
    state = model.state_dict()
    unmasked = sum(log10_factorial(g.size) for g in structure.groups)
    if structure.masks:
        log10_order, order = count_automorphisms(build_unit_graph(structure, structure.mask_values))
    else:
        log10_order = unmasked
        order = math.prod(math.factorial(g.size) for g in structure.groups) if unmasked < EXACT_BELOW else None
    full = build_unit_graph(structure, state)
    log10_stab = log10_automorphisms(full)
    classes = refine(full)
    odd = [g for g in structure.groups if g.odd]
    flips = log10_order + sum(g.size for g in odd) * math.log10(2) if odd else None
    rows = tuple(
        {
            "name": g.name,
            "size": g.size,
            "log10_factorial": log10_factorial(g.size),
            "odd": g.odd,
            "distinct_units": int(len(set(classes[i].tolist()))),
            "members": [m.name + (f"[axis {m.axis}]" if m.axis else "") for m in g.members],
        }
        for i, g in enumerate(structure.groups)
    )
    return SymmetryCount(
        log10_order=log10_order,
        order=order,
        log10_order_unmasked=unmasked,
        log10_order_with_sign_flips=flips,
        log10_stabilizer=log10_stab,
        log10_orbit=log10_order - log10_stab,
        masked=bool(structure.masks),
        groups=rows,
        seconds=time.perf_counter() - start,
    )


def formula_group_sizes(arch: str) -> list[int]:
    """Group sizes of a built-in architecture read off its string, without building it.

    mlp: the hidden widths; convnet: the channel counts; resmlp: the stream width and each
    block's hidden width (modular: counted on its masked equivalent, not by formula).
    """
    from permsym._errors import PermsymError
    from permsym.archs import parse

    spec = parse(arch)
    dims = [d[0] for d in spec.dims[1:]]
    if spec.family == "mlp":
        return [d[0] for d in spec.dims[1:-1]]
    if spec.family == "convnet":
        return dims[:-1]
    if spec.family == "resmlp":
        width = spec.dims[1][0]
        return [width] + [spec.options["hidden"] or width] * spec.options["blocks"]
    raise PermsymError(f"formula_group_sizes: no closed form for {spec.family!r}; build the model and use count_symmetries.")


def formula_log10_order(arch: str, *, sign_flips: bool = False) -> float:
    r"""$\sum_k \log_{10} w_k!$ (plus $w_k \log_{10} 2$ with ``sign_flips``), instant at any width.

    Examples:
        >>> round(formula_log10_order("mlp:784-1024-1024-10"), 2)
        5279.47
    """
    sizes = formula_group_sizes(arch)
    return sum(log10_factorial(w) + (w * math.log10(2) if sign_flips else 0.0) for w in sizes)
