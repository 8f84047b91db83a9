r"""Canonical ordering of units by a key (e.g. the norm of their outgoing weights).

Sorting both models into canonical order and matching ranks aligns them: the reference's
$r$-th unit receives the other model's $r$-th unit. For a one-dimensional key this is the
assignment minimising $\sum_i |k_A(i) - k_B(\pi(i))|$. Ties are broken lexicographically by
the unit's connection vector. Where masks restrict a group, that assignment is solved under
the mask constraint instead (``scipy.optimize.linear_sum_assignment``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from permsym.alignment._units import (
    Layout,
    mask_admissible,
    scored_names,
    unit_features,
    unit_matrix,
)

__all__ = ["KEYS", "canonical_order", "match_by_sort", "unit_keys"]

KEYS = ("out_norm", "in_norm", "norm")


def unit_keys(state: Mapping[str, torch.Tensor], lay: Layout, gi: int, *, key: str = "out_norm") -> np.ndarray:
    r"""Per-unit key of group ``gi``: $\lVert \cdot \rVert_2$ of its slices of the selected members.

    ``out_norm`` uses the members on axis 1 of a tensor with at least two axes (the unit's
    column in the next Linear or Conv: its outgoing weights), ``in_norm`` those on axis 0 of
    such tensors (incoming weights), ``norm`` every floating member. A key that selects no
    member falls back to ``norm``.
    """
    if key not in KEYS:
        raise ValueError(f"canonical_order: key must be one of {', '.join(KEYS)}; got {key!r}.")
    group = lay.structure.groups[gi]
    scored = set(scored_names(state, lay))

    def pick(m) -> bool:  # type: ignore[no-untyped-def]
        nd = state[m.name].ndim
        return {"out_norm": m.axis == 1 and nd >= 2, "in_norm": m.axis == 0 and nd >= 2, "norm": True}[key]

    members = [m for m in group.members if m.name in scored and pick(m)]
    if not members:
        members = [m for m in group.members if m.name in scored]
    sq = np.zeros(group.size)
    for m in members:
        rows = unit_matrix(state[m.name], m.axis, group.size).double()
        sq += (rows**2).sum(1).cpu().numpy()
    return np.sqrt(sq)


def _ranked(keys: np.ndarray, features: torch.Tensor) -> np.ndarray:
    """Unit indices by descending key, ties by the lexicographic order of the features."""
    cols = features.double().cpu().numpy()
    return np.lexsort([*cols.T[::-1], -keys])


def canonical_order(state: Mapping[str, torch.Tensor], lay: Layout, *, key: str = "out_norm") -> list[torch.Tensor]:
    """Permutations that put one model's units into canonical order (descending key).

    Groups are processed in structure order; tie-breaking features see the earlier groups
    already sorted.
    """
    perms = [torch.arange(n) for n in lay.sizes]
    for gi in range(len(lay.sizes)):
        order = _ranked(unit_keys(state, lay, gi, key=key), unit_features(state, lay, gi, perms))
        perms[gi] = torch.as_tensor(order, dtype=torch.long)
    return perms


def match_by_sort(
    sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor], lay: Layout, *, key: str = "out_norm"
) -> tuple[list[torch.Tensor], list[str]]:
    """Align ``sb`` to ``sa`` by matching ranks of the canonical order, group by group."""
    ident = [torch.arange(n) for n in lay.sizes]
    perms = [torch.arange(n) for n in lay.sizes]
    notes: list[str] = []
    for gi, group in enumerate(lay.structure.groups):
        ka, kb = unit_keys(sa, lay, gi, key=key), unit_keys(sb, lay, gi, key=key)
        allowed = mask_admissible(sa, sb, lay, gi, perms) if lay.is_masked(gi) else None
        if allowed is None:
            ra = _ranked(ka, unit_features(sa, lay, gi, ident))
            rb = _ranked(kb, unit_features(sb, lay, gi, perms))
            perm = np.empty(group.size, dtype=np.int64)
            perm[ra] = rb
        else:
            cost = np.where(allowed, -np.abs(ka[:, None] - kb[None, :]), -np.inf)
            rows, cols = linear_sum_assignment(cost, maximize=True)
            perm = cols[np.argsort(rows)]
            notes.append(f"group {group.name!r}: sorted under the mask constraint (mask-preserving matches only).")
        perms[gi] = torch.as_tensor(perm, dtype=torch.long)
    return perms, notes
