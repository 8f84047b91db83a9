"""Permutation symmetry: structure inference (torch.fx), permutations, exact group orders."""

from __future__ import annotations

from permsym.symmetry.count import (
    SymmetryCount,
    count_symmetries,
    formula_group_sizes,
    formula_log10_order,
    log10_factorial,
)
from permsym.symmetry.permute import apply_permutation, random_permutation
from permsym.symmetry.structure import Group, Member, Structure
from permsym.symmetry.trace import infer_structure

__all__ = [
    "Group",
    "Member",
    "Structure",
    "SymmetryCount",
    "apply_permutation",
    "count_symmetries",
    "example_input",
    "formula_group_sizes",
    "formula_log10_order",
    "infer_structure",
    "log10_factorial",
    "random_permutation",
]


def example_input(model, *, batch: int = 2):  # type: ignore[no-untyped-def]
    """A zero input batch of the size ``model.permsym_arch`` declares (for tracing)."""
    import math

    import torch

    from permsym._errors import PermsymError
    from permsym.archs import parse

    arch = getattr(model, "permsym_arch", None)
    if arch is None:
        raise PermsymError("example_input: model has no permsym_arch; pass an example input yourself.")
    spec = parse(arch)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    return torch.zeros(batch, math.prod(spec.dims[0]), dtype=dtype)
