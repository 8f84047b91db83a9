r"""Greedy re-ordering by Sorensen-Dice similarity of connection vectors.

For connection vectors $a$ (reference unit) and $b$ (other unit),

$$D(a, b) = \frac{2 \sum_d \min(|a_d|, |b_d|)}{\sum_d (|a_d| + |b_d|)} \in [0, 1] .$$

Groups are processed in structure order (inputs first). A unit's connection vector holds its
slices of every member tensor whose other permuted axes belong to groups already matched (or
to none), so that entries compare like with like: for an MLP, the incoming row and bias, and
the outgoing column where it feeds the fixed output layer. The pairs are then matched
greedily: repeatedly take the most similar pair whose units are both still free.

Note:
    The paper (arXiv 2411.07008) names a "Sorensen reordering heuristic" without defining
    it. The greedy Dice matching here is our reading of it, not the authors' definition.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from permsym.alignment._units import (
    Layout,
    mask_admissible,
    permute_axes,
    scored_names,
    unit_matrix,
)

__all__ = ["dice_matrix", "greedy_match", "match_sorensen"]


def dice_matrix(a: torch.Tensor, b: torch.Tensor, *, chunk_elements: int = 1 << 24) -> torch.Tensor:
    r"""$D[i, j] = 2 \sum_d \min(|a_{id}|, |b_{jd}|) / \sum_d (|a_{id}| + |b_{jd}|)$ (0 where both are 0).

    Examples:
        >>> dice_matrix(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([[1., 0.]])
    """
    a, b = a.abs(), b.abs()
    n, dim = a.shape
    out = torch.empty(n, b.shape[0], dtype=torch.promote_types(a.dtype, b.dtype))
    step = max(1, chunk_elements // max(1, b.shape[0] * max(dim, 1)))
    sb = b.sum(1)
    for start in range(0, n, step):
        blk = a[start : start + step]
        num = 2 * torch.minimum(blk[:, None, :], b[None, :, :]).sum(-1)
        den = blk.sum(1)[:, None] + sb[None, :]
        out[start : start + step] = torch.where(den > 0, num / den.clamp_min(torch.finfo(out.dtype).tiny), 0.0)
    return out


def greedy_match(sim: np.ndarray) -> np.ndarray:
    """``perm[i] = j``: repeatedly pair the most similar free row ``i`` and column ``j``.

    Ties go to the smaller row, then the smaller column.

    Examples:
        >>> greedy_match(np.array([[0.9, 0.8], [0.85, 0.1]])).tolist()
        [0, 1]
    """
    n = sim.shape[0]
    flat = np.argsort(-sim, axis=None, kind="stable")
    perm = np.full(n, -1, dtype=np.int64)
    col_free = np.ones(n, dtype=bool)
    left = n
    for idx in flat:
        i, j = divmod(int(idx), n)
        if perm[i] < 0 and col_free[j]:
            perm[i], col_free[j] = j, False
            left -= 1
            if left == 0:
                break
    return perm


def _features(state: Mapping[str, torch.Tensor], lay: Layout, gi: int, perms: list[torch.Tensor],
              done: set[int], scored: set[str]) -> torch.Tensor:
    group = lay.structure.groups[gi]
    parts = []
    for m in group.members:
        entries = lay.axes[m.name]
        if m.name not in scored or any(g not in done for g, ax, _ in entries if (g, ax) != (gi, m.axis)):
            continue
        t = permute_axes(state[m.name], entries, perms, skip=(gi, m.axis))
        parts.append(unit_matrix(t, m.axis, group.size))
    return torch.cat(parts, 1) if parts else torch.zeros(group.size, 0)


def match_sorensen(
    sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor], lay: Layout
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Greedy Dice matching of ``sb``'s units to ``sa``'s, group by group.

    Returns the permutations, the Dice similarity of every matched pair, and notes.
    Under masks, pairs that would break a mask are excluded; if the greedy pass cannot
    complete with admissible pairs, that group is solved as an assignment on the same
    similarities instead (said in a note).
    """
    ident = [torch.arange(n) for n in lay.sizes]
    perms = [torch.arange(n) for n in lay.sizes]
    scored = set(scored_names(sa, lay))
    done: set[int] = set()
    sims: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for gi, group in enumerate(lay.structure.groups):
        fa = _features(sa, lay, gi, ident, done, scored)
        fb = _features(sb, lay, gi, perms, done, scored)
        dice = dice_matrix(fa.double(), fb.double()).cpu().numpy()
        allowed = mask_admissible(sa, sb, lay, gi, perms) if lay.is_masked(gi) else None
        score = dice if allowed is None else np.where(allowed, dice, -np.inf)
        perm = greedy_match(score)
        if allowed is not None and not allowed[np.arange(group.size), perm].all():
            rows, cols = linear_sum_assignment(score, maximize=True)
            perm = cols[np.argsort(rows)]
            notes.append(f"group {group.name!r}: greedy matching broke the mask; solved as an assignment.")
        perms[gi] = torch.as_tensor(perm, dtype=torch.long)
        sims[group.name] = torch.as_tensor(dice[np.arange(group.size), perm])
        done.add(gi)
    return perms, sims, notes
