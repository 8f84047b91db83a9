"""Unit views of a state dict, generic over a :class:`~permsym.symmetry.Structure`.

A group ``g`` of ``n`` units moves tensor axes (its members). The *unit matrix* of a member is
the tensor with that axis moved to the front and reshaped to ``(n, -1)``; with ``block > 1``
unit ``u`` owns the ``block`` consecutive entries ``u*block ... u*block + block - 1``, which the
reshape keeps together. Every alignment method compares the unit matrices of the reference
with those of the other model, after permuting the other model's *remaining* axes by the
current permutations of the other groups. Permutations use the gather convention
``new[..., i, ...] = old[..., perm[i], ...]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from permsym._errors import PermsymError
from permsym.symmetry.structure import Structure

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """Which groups move which axes: ``axes[name] = ((group_index, axis, block), ...)``."""

    structure: Structure
    axes: dict[str, tuple[tuple[int, int, int], ...]]
    masks: frozenset[str]

    @property
    def sizes(self) -> list[int]:
        return [g.size for g in self.structure.groups]

    def neighbours(self, gi: int) -> set[int]:
        """Groups sharing a tensor with group ``gi`` (``gi`` itself if it moves two axes of one)."""
        out: set[int] = set()
        for m in self.structure.groups[gi].members:
            entries = self.axes[m.name]
            out |= {g for g, ax, _ in entries if (g, ax) != (gi, m.axis)}
        return out

    def is_masked(self, gi: int) -> bool:
        return any(m.name in self.masks for m in self.structure.groups[gi].members)


def layout_of(structure: Structure) -> Layout:
    """Invert a structure: tensor name -> the (group, axis, block) entries that move it."""
    axes: dict[str, list[tuple[int, int, int]]] = {}
    for gi, group in enumerate(structure.groups):
        for m in group.members:
            entry = (gi, m.axis, m.block)
            if entry not in axes.setdefault(m.name, []):
                axes[m.name].append(entry)
    return Layout(structure, {k: tuple(v) for k, v in axes.items()}, frozenset(structure.masks))


def block_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Entry indices of a unit permutation on an axis with ``block`` entries per unit."""
    if block == 1:
        return perm
    return (perm[:, None] * block + torch.arange(block)).reshape(-1)


def permute_axes(
    tensor: torch.Tensor,
    entries: tuple[tuple[int, int, int], ...],
    perms: list[torch.Tensor],
    *,
    skip: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Gather ``tensor`` along every entry's axis by that group's permutation, except ``skip``."""
    for gi, axis, block in entries:
        if (gi, axis) == skip:
            continue
        perm = perms[gi]
        if torch.equal(perm, torch.arange(perm.numel())):
            continue
        tensor = tensor.index_select(axis, block_index(perm, block).to(tensor.device))
    return tensor


def unit_matrix(tensor: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """``(n, -1)`` view of ``tensor`` with one row per unit on ``axis``."""
    return tensor.movedim(axis, 0).reshape(n, -1)


def permute_state(state: Mapping[str, torch.Tensor], lay: Layout, perms: list[torch.Tensor]) -> State:
    """Apply all permutations to a state dict (a new dict; tensors are not changed in place)."""
    return {k: permute_axes(v, lay.axes[k], perms) if k in lay.axes else v for k, v in state.items()}


def scored_names(state: Mapping[str, torch.Tensor], lay: Layout) -> list[str]:
    """Tensors that enter objectives and distances: floating point, not a mask."""
    return [k for k, v in state.items() if v.is_floating_point() and k not in lay.masks]


def inner(sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor], names: list[str]) -> float:
    r"""$\sum_k \langle A_k, B_k \rangle$: products in the tensors' dtype (at least float32), summed in float64."""
    return float(sum(_dot64(sa[k], sb[k]) for k in names))


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 tensors as float32 (their products would round at ~1e-3); others as they are."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def _dot64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype == torch.float64 and b.dtype == torch.float64:
        return torch.vdot(a.reshape(-1), b.reshape(-1))
    return (_wide(a) * _wide(b)).sum(dtype=torch.float64)  # no float64 copies of the operands


def distance(sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor], names: list[str]) -> float:
    r"""$\big(\sum_k \lVert A_k - B_k \rVert^2\big)^{1/2}$: differences in the tensors' dtype
    (exact where the entries are within a factor 2 of each other), squares summed in float64."""
    total = sum(float(torch.linalg.vector_norm(_wide(sa[k]) - _wide(sb[k]), dtype=torch.float64)) ** 2 for k in names)
    return float(np.sqrt(total))


def unit_features(state: Mapping[str, torch.Tensor], lay: Layout, gi: int, perms: list[torch.Tensor]) -> torch.Tensor:
    """Connection vector of every unit of group ``gi``: its slices of every scored member.

    The other groups' axes are permuted by ``perms`` first, so that rows of the reference and
    of the other model are comparable entry by entry.
    """
    group = lay.structure.groups[gi]
    parts = []
    for m in group.members:
        if m.name in lay.masks or not state[m.name].is_floating_point():
            continue
        t = permute_axes(state[m.name], lay.axes[m.name], perms, skip=(gi, m.axis))
        parts.append(unit_matrix(t, m.axis, group.size))
    if not parts:
        return torch.zeros(group.size, 0, dtype=torch.float64)
    return torch.cat(parts, dim=1)


def _per_unit(a: torch.Tensor, b: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """Sum of ``a * b`` over every axis but ``axis``, then over each unit's block: ``(n,)`` float64."""
    t = _wide(a) * _wide(b)
    other = [d for d in range(t.dim()) if d != axis]
    return (t.sum(dim=other, dtype=torch.float64) if other else t.double()).reshape(n, -1).sum(1)


def unit_cosines(sa: Mapping[str, torch.Tensor], aligned: Mapping[str, torch.Tensor], lay: Layout) -> dict[str, torch.Tensor]:
    r"""$\cos(a_i, b_i)$ of the connection vectors of reference unit $i$ and aligned unit $i$, per group.

    The same numbers as :func:`permsym.alignment.result.cosine_similarity_per_unit` (up to
    rounding), accumulated member by member from the tensors as they are: no permuted copies
    and no concatenated feature matrices. Products in the tensors' dtype, sums in float64.
    """
    out = {}
    for group in lay.structure.groups:
        n = group.size
        dot, na, nb = (torch.zeros(n, dtype=torch.float64) for _ in range(3))
        for m in group.members:
            if m.name in lay.masks or not sa[m.name].is_floating_point():
                continue
            a, b = sa[m.name], aligned[m.name]
            dot += _per_unit(a, b, m.axis, n)
            na += _per_unit(a, a, m.axis, n)
            nb += _per_unit(b, b, m.axis, n)
        denom = (na.sqrt() * nb.sqrt()).clamp_min(torch.finfo(torch.float64).tiny)
        out[group.name] = dot / denom
    return out


def _row_ids(rows: np.ndarray) -> np.ndarray:
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def mask_admissible(
    sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor], lay: Layout, gi: int, perms: list[torch.Tensor]
) -> np.ndarray | None:
    """Boolean ``(n, n)``: may unit ``j`` of the other model sit at position ``i``?

    True when every mask slice of unit ``j`` (other groups permuted by ``perms``) equals the
    reference's slice of unit ``i``. ``None`` when no mask moves with the group.
    """
    group = lay.structure.groups[gi]
    n = group.size
    ok = None
    for m in group.members:
        if m.name not in lay.masks:
            continue
        a = unit_matrix(sa[m.name], m.axis, n).detach().cpu().numpy()
        b = unit_matrix(permute_axes(sb[m.name], lay.axes[m.name], perms, skip=(gi, m.axis)), m.axis, n)
        ids = _row_ids(np.concatenate([a, b.detach().cpu().numpy()]))
        same = ids[:n, None] == ids[None, n:]
        ok = same if ok is None else ok & same
    return ok


def check_compatible(call: str, sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor],
                     masks: frozenset[str] | set[str] = frozenset()) -> None:
    """Raise naming the first parameter in which two state dicts differ in name, shape or mask."""
    for (ka, va), (kb, vb) in zip(sa.items(), sb.items(), strict=False):
        if ka != kb:
            raise PermsymError(f"{call}: models differ at parameter {ka!r} (the other model has {kb!r}); "
                               f"both must have the same architecture.")
        if va.shape != vb.shape:
            raise PermsymError(f"{call}: parameter {ka!r} has shape {tuple(va.shape)} in the reference and "
                               f"{tuple(vb.shape)} in the other model; widths must match.")
        if va.dtype != vb.dtype:
            raise PermsymError(f"{call}: parameter {ka!r} is {va.dtype} in the reference and {vb.dtype} "
                               f"in the other model; convert both to one dtype.")
    if len(sa) != len(sb):
        longer, name = ("reference", list(sa)[len(sb)]) if len(sa) > len(sb) else ("other model", list(sb)[len(sa)])
        raise PermsymError(f"{call}: only the {longer} has parameter {name!r}; both must have the same architecture.")
    for name in sa:
        if name in masks and not torch.equal(sa[name], sb[name]):
            raise PermsymError(f"{call}: mask {name!r} differs between the models; alignment needs the "
                               f"same masks (same mask_seed).")
