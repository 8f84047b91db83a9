r"""Weight matching by coordinate descent over permutation groups (Git Re-Basin).

Maximises the weight-matching objective over one permutation $\pi_g$ per group,

$$J(\pi) = \sum_k \langle A_k, \pi(B)_k \rangle_F ,$$

summed over every floating tensor of the state dict except masks. With all groups but $g$
fixed, $J$ is linear in the permutation matrix $P_g$: $J = \text{const} + \langle C_g, P_g\rangle$ with

$$C_g[i, j] = \sum_{m \in g} \langle A_m[i], \pi_{-g}(B_m)[j] \rangle ,$$

the sum over the members $m$ of $g$ of the inner products of unit rows (``_units``). Each step
solves that linear assignment exactly (``scipy.optimize.linear_sum_assignment``) and keeps the
result only if it raises $J$, so $J$ never decreases and the sweeps stop after finitely many
steps. A member's term depends only on the permutations of the *other* groups on its tensor;
terms are cached and recomputed only when one of those changed, and a group whose neighbours
did not change since its last solve is skipped.

References:
    Ainsworth, Hayase, Srinivasa, "Git Re-Basin: Merging Models modulo Permutation
    Symmetries", ICLR 2023 (arXiv:2209.04836), Algorithm 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from permsym._errors import check_positive_int
from permsym.alignment._units import (
    Layout,
    inner,
    mask_admissible,
    permute_axes,
    scored_names,
    unit_matrix,
)

__all__ = ["INITS", "WeightMatch", "match_weights"]

INITS = ("forward", "identity")


@dataclass(frozen=True)
class WeightMatch:
    """Permutations (one per group, gather convention), objective and its history per sweep.

    ``objectives`` holds the final objective of every restart (the spread over sweep orders).
    """

    perms: tuple[torch.Tensor, ...]
    objective: float
    objective_identity: float
    history: tuple[float, ...]
    sweeps: int
    objectives: tuple[float, ...]
    fixed_groups: tuple[int, ...]


def _assign(cost: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Column of the best assignment per row, maximising ``sum cost[i, col[i]]`` over allowed pairs."""
    if allowed is not None:
        cost = np.where(allowed, cost, -np.inf)
    best = cost.argmax(axis=1)
    if np.unique(best).size == best.size and np.isfinite(cost[np.arange(best.size), best]).all():
        return best  # every row gets its own best column: no assignment can do better
    rows, cols = linear_sum_assignment(cost, maximize=True)
    out = np.empty_like(cols)
    out[rows] = cols
    return out


class _Costs:
    """Cached member terms $\\langle A_m[i], \\pi_{-g}(B_m)[j]\\rangle$ of every group."""

    def __init__(self, sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor], lay: Layout) -> None:
        self.sa, self.sb, self.lay = sa, sb, lay
        scored = set(scored_names(sa, lay))
        self.members = [
            [m for m in g.members if m.name in scored] for g in lay.structure.groups
        ]
        self.cache: dict[tuple[int, str, int], tuple[tuple[int, ...], torch.Tensor]] = {}
        self.stamps = itertools.count(1)  # version ids unique across restarts (0: identity)
        self.a_rows = {
            (gi, m.name, m.axis): unit_matrix(sa[m.name], m.axis, g.size)
            for gi, g in enumerate(lay.structure.groups)
            for m in self.members[gi]
        }

    def cost(self, gi: int, perms: list[torch.Tensor], versions: list[int]) -> np.ndarray:
        n = self.lay.structure.groups[gi].size
        total: torch.Tensor | None = None
        for m in self.members[gi]:
            entries = self.lay.axes[m.name]
            deps = tuple(versions[g] if (g, ax) != (gi, m.axis) else -1 for g, ax, _ in entries)
            key = (gi, m.name, m.axis)
            hit = self.cache.get(key)
            if hit is None or hit[0] != deps:
                b = permute_axes(self.sb[m.name], entries, perms, skip=(gi, m.axis))
                term = self.a_rows[key] @ unit_matrix(b, m.axis, n).T
                self.cache[key] = (deps, term)
            else:
                term = hit[1]
            total = term if total is None else total + term
        if total is None:
            return np.zeros((n, n))
        return total.double().cpu().numpy()


def _forward_start(costs: _Costs, lay: Layout, sb) -> tuple[list[torch.Tensor], list[int]]:
    """Greedy start: solve the groups once in structure order, each on its *settled* terms only.

    A member term of group ``g`` enters only when every other group moving that tensor was solved
    before (for an MLP: a hidden layer's incoming weights and bias given the layer below, but not
    its outgoing weights, whose other axis is still unaligned). From the identity the outgoing
    terms pair units with arbitrary partners and add noise to the first assignments; leaving them
    out until their partner group is settled is a better starting point (as in Git Re-Basin's
    layer-by-layer matching). Masked groups keep the identity (admissibility of later groups).
    The terms computed here go into the cost cache, stamped with the versions of the start.
    Returns the start permutations and their versions (0: identity).
    """
    perms = [torch.arange(n) for n in lay.sizes]
    versions = [0] * len(perms)
    settled: set[int] = set()
    for gi, group in enumerate(lay.structure.groups):
        total: torch.Tensor | None = None
        if not lay.is_masked(gi):
            for m in costs.members[gi]:
                entries = lay.axes[m.name]
                if any(g not in settled for g, ax, _ in entries if (g, ax) != (gi, m.axis)):
                    continue
                b = permute_axes(sb[m.name], entries, perms, skip=(gi, m.axis))
                key = (gi, m.name, m.axis)
                term = costs.a_rows[key] @ unit_matrix(b, m.axis, group.size).T
                deps = tuple(versions[g] if (g, ax) != (gi, m.axis) else -1 for g, ax, _ in entries)
                costs.cache[key] = (deps, term)
                total = term if total is None else total + term
        if total is not None:
            cols = torch.as_tensor(_assign(total.double().cpu().numpy(), None), dtype=torch.long)
            if not torch.equal(cols, perms[gi]):
                perms[gi], versions[gi] = cols, next(costs.stamps)
        settled.add(gi)
    return perms, versions


def _descend(costs: _Costs, lay: Layout, sa, sb, perms: list[torch.Tensor], versions: list[int],
             order_gen: torch.Generator, max_sweeps: int, j0: float) -> tuple[list[torch.Tensor], list[float], int]:
    n_groups = len(lay.structure.groups)
    versions = list(versions)
    solved_at: list[tuple[int, ...] | None] = [None] * n_groups
    neighbours = [sorted(lay.neighbours(g)) for g in range(n_groups)]
    j = j0
    history: list[float] = []
    sweeps = 0
    for _ in range(max_sweeps):
        sweeps += 1
        changed = False
        for gi in torch.randperm(n_groups, generator=order_gen).tolist():
            stamp = tuple(versions[h] for h in neighbours[gi]) + (versions[gi],)
            if solved_at[gi] == stamp:
                continue  # nothing it depends on moved: the assignment would be the same
            cost = costs.cost(gi, perms, versions)
            allowed = mask_admissible(sa, sb, lay, gi, perms) if lay.is_masked(gi) else None
            cols = _assign(cost, allowed)
            n = cost.shape[0]
            current = perms[gi].cpu().numpy()
            old, new = float(cost[np.arange(n), current].sum()), float(cost[np.arange(n), cols].sum())
            if new > old + 1e-12 * max(1.0, abs(j)) and not np.array_equal(cols, current):
                perms[gi] = torch.as_tensor(cols, dtype=torch.long)
                versions[gi] = next(costs.stamps)
                j += new - old
                changed = True
            solved_at[gi] = tuple(versions[h] for h in neighbours[gi]) + (versions[gi],)
        history.append(j)
        if not changed:
            break
    return perms, history, sweeps


def match_weights(
    sa: Mapping[str, torch.Tensor],
    sb: Mapping[str, torch.Tensor],
    lay: Layout,
    *,
    max_sweeps: int = 100,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    init: str = "forward",
) -> WeightMatch:
    r"""Maximise $J(\pi)$ by coordinate descent; best of ``restarts`` random sweep orders.

    Args:
        sa: reference state dict. sb: the other model's state dict (same names and shapes).
        lay: the unit layout of the structure both share.
        max_sweeps: cap on full sweeps over the groups per restart.
        restarts: independent descents from the identity, each with its own random group
            order per sweep; the one with the largest $J$ is returned.
        generator: draws the sweep orders (``None``: a generator seeded with 0).
        init: where every descent starts: ``"forward"`` (default; one greedy pass over the
            groups in structure order on already-settled terms, see :func:`_forward_start`;
            used only if its $J$ is at least the identity's) or ``"identity"`` (Algorithm 1).

    Groups moving a mask are restricted to mask-preserving matches (the current
    permutation is always admissible, so a feasible assignment exists).
    """
    check_positive_int("match_weights", "max_sweeps", max_sweeps)
    check_positive_int("match_weights", "restarts", restarts)
    if init not in INITS:
        raise ValueError(f"match_weights: init must be one of {', '.join(INITS)}; got {init!r}.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    names = scored_names(sa, lay)
    j_id = inner(sa, sb, names)  # objectives: products in the weights' dtype, sums in float64
    costs = _Costs(sa, sb, lay)
    best: tuple[list[torch.Tensor], list[float], int] | None = None
    finals: list[float] = []
    with torch.no_grad():
        first, v_first, j_first = [torch.arange(n) for n in lay.sizes], [0] * len(lay.sizes), j_id
        if init == "forward":
            fwd, v_fwd = _forward_start(costs, lay, sb)
            j_fwd = inner(sa, {k: permute_axes(sb[k], lay.axes[k], fwd) if k in lay.axes else sb[k]
                               for k in names}, names)
            if j_fwd >= j_id:  # never start below the identity: the objective must not decrease
                first, v_first, j_first = fwd, v_fwd, j_fwd
        for _ in range(restarts):
            perms, history, sweeps = _descend(costs, lay, sa, sb, list(first), v_first, gen, max_sweeps, j_first)
            finals.append(history[-1])
            if best is None or history[-1] > best[1][-1]:
                best = (perms, history, sweeps)
    assert best is not None
    perms, history, sweeps = best
    fixed = tuple(
        gi for gi in range(len(lay.sizes))
        if lay.is_masked(gi) and _only_identity(mask_admissible(sa, sb, lay, gi, perms))
    )
    if all(torch.equal(p, q) for p, q in zip(perms, first, strict=True)):
        objective = j_first  # the start itself, already scored exactly
    else:
        aligned = {k: permute_axes(sb[k], lay.axes[k], perms) if k in lay.axes else sb[k] for k in names}
        objective = inner(sa, aligned, names)
    return WeightMatch(
        perms=tuple(perms),
        objective=objective,
        objective_identity=j_id,
        history=tuple(history),
        sweeps=sweeps,
        objectives=tuple(finals),
        fixed_groups=fixed,
    )


def _only_identity(allowed: np.ndarray | None) -> bool:
    return allowed is not None and bool((allowed == np.eye(allowed.shape[0], dtype=bool)).all())
