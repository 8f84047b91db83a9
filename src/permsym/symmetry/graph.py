"""Automorphisms of the layered unit graph: colour refinement, then igraph's BLISS.

Vertices are the units of every group; a tensor that one group indexes gives each unit a
label (its row of the tensor); a tensor that two groups index gives each pair of units a
value (an edge colour). An automorphism is a tuple of per-group permutations that keeps
every label and every pair value. Colour refinement (1-WL) splits units into classes that
automorphisms must keep; where every block of pair values between two classes is constant,
the group is the product of the classes' symmetric groups. Blocks that are not constant
(rare: regular mask patterns) are handed to BLISS with the classes as vertex colours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from permsym._errors import PermsymError
from permsym.symmetry.structure import Structure

LN10 = math.log(10.0)


def log10_factorial(n: int) -> float:
    """log10(n!) via lgamma (never a factorial)."""
    return math.lgamma(n + 1) / LN10


@dataclass
class UnitGraph:
    """Labels per group and pair values per pair of groups, as small integer ids."""

    sizes: list[int]
    labels: list[np.ndarray]  # (n_g,) ints
    relations: dict[tuple[int, int], np.ndarray]  # (a, b) -> (n_a, n_b) ints, a < b


def _ids(rows: np.ndarray) -> np.ndarray:
    """Integer id of each row (equal rows, equal ids)."""
    if rows.ndim == 1 or rows.shape[1] == 1:
        return np.unique(rows.reshape(-1), return_inverse=True)[1].reshape(-1)
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def _combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ids of the pairs (a_i, b_i)."""
    return _ids(np.stack([a.reshape(-1), b.reshape(-1)], axis=1)).reshape(a.shape)


def build_unit_graph(structure: Structure, tensors: Mapping[str, torch.Tensor]) -> UnitGraph:
    """Collect labels and pair values from ``tensors`` (a subset of the state dict)."""
    sizes = [g.size for g in structure.groups]
    labels = [np.zeros(n, dtype=np.int64) for n in sizes]
    relations: dict[tuple[int, int], np.ndarray] = {}
    axes: dict[str, list[tuple[int, int, int]]] = {}
    for gi, group in enumerate(structure.groups):
        for m in group.members:
            if m.name in tensors:
                axes.setdefault(m.name, []).append((gi, m.axis, m.block))
    for name, found in axes.items():
        t = tensors[name].detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        arr = t.numpy()
        if len(found) == 1:
            g, axis, block = found[0]
            rows = np.moveaxis(arr, axis, 0).reshape(sizes[g], -1)
            labels[g] = _combine(labels[g], _ids(rows))
        elif len(found) == 2:
            (ga, axa, ba), (gb, axb, bb) = sorted(found)
            if ga == gb:
                raise PermsymError(f"count_symmetries: {name!r} is indexed twice by group "
                                   f"{structure.groups[ga].name!r}; square maps within one group are not supported.")
            moved = np.moveaxis(arr, (axa, axb), (0, 1))
            rest = moved.shape[2:]
            blocks = moved.reshape(sizes[ga], ba, sizes[gb], bb, *rest).swapaxes(1, 2)
            values = _ids(blocks.reshape(sizes[ga] * sizes[gb], -1)).reshape(sizes[ga], sizes[gb])
            key = (ga, gb)
            relations[key] = values if key not in relations else _combine(relations[key], values)
        else:
            raise PermsymError(f"count_symmetries: {name!r} is indexed by {len(found)} groups; at most 2 are supported.")
    return UnitGraph(sizes, labels, relations)


def refine(graph: UnitGraph) -> list[np.ndarray]:
    """Stable colour refinement: per group, the class id of each unit (ids unique per group)."""
    colors = [lab.copy() for lab in graph.labels]
    counts = [len(np.unique(c)) for c in colors]
    while True:
        new = []
        for g in range(len(colors)):
            parts = [colors[g][:, None]]
            for (a, b), values in graph.relations.items():
                scale = int(values.max()) + 1
                if a == g:
                    parts.append(np.sort(colors[b][None, :] * scale + values, axis=1))
                elif b == g:
                    parts.append(np.sort(colors[a][:, None] * scale + values, axis=0).T)
            new.append(_ids(np.concatenate(parts, axis=1)) if len(parts) > 1 else colors[g])
        new_counts = [len(np.unique(c)) for c in new]
        colors = new
        if new_counts == counts:
            return colors
        counts = new_counts


EXACT_BELOW = 30  # exact integer counts are returned below 10**30


def log10_automorphisms(graph: UnitGraph) -> float:
    """log10 of the number of automorphisms of ``graph`` (exact)."""
    return count_automorphisms(graph)[0]


def count_automorphisms(graph: UnitGraph) -> tuple[float, int | None]:
    """(log10 |Aut|, |Aut| as an exact integer when it is below 10**30, else None)."""
    colors = refine(graph)
    classes = [(g, c) for g in range(len(colors)) for c in np.unique(colors[g])]
    members = {(g, c): np.flatnonzero(colors[g] == c) for g, c in classes}
    hard: list[tuple[tuple[int, int], tuple[int, int], np.ndarray]] = []
    for (a, b), values in graph.relations.items():
        for ca in np.unique(colors[a]):
            rows = members[(a, ca)]
            if len(rows) < 2:
                continue
            for cb in np.unique(colors[b]):
                cols = members[(b, cb)]
                if len(cols) < 2:
                    continue
                block = values[np.ix_(rows, cols)]
                if (block != block.flat[0]).any():
                    hard.append(((a, int(ca)), (b, int(cb)), block))
    involved = {k for h in hard for k in h[:2]}
    free = [len(members[k]) for k in members if k not in involved]
    total = sum(log10_factorial(n) for n in free)
    bliss = _bliss_count(hard, members) if hard else 1
    total += math.log10(bliss)
    exact = math.prod(math.factorial(n) for n in free) * bliss if total < EXACT_BELOW else None
    return total, exact


def _bliss_count(hard: list, members: dict) -> int:
    """Count automorphisms of the non-constant blocks with igraph's BLISS."""
    import igraph

    index: dict[tuple[int, int], int] = {}
    color: list[int] = []
    for key in sorted({k for h in hard for k in h[:2]}):
        index[key] = len(color)
        color.extend([len(index) - 1] * len(members[key]))
    edges: list[tuple[int, int]] = []
    next_color = len(index)
    for ka, kb, block in hard:
        va = index[ka] + np.arange(block.shape[0])
        vb = index[kb] + np.arange(block.shape[1])
        values = np.unique(block)
        if len(values) == 2:  # a binary block: edges where the rarer value is
            rare = values[np.argmin([(block == v).sum() for v in values])]
            ii, jj = np.nonzero(block == rare)
            edges.extend(zip(va[ii].tolist(), vb[jj].tolist(), strict=True))
            continue
        for v in values:  # several values: subdivide each edge with a vertex coloured by its value
            ii, jj = np.nonzero(block == v)
            mids = len(color) + np.arange(len(ii))
            color.extend([next_color] * len(ii))
            edges.extend(zip(va[ii].tolist(), mids.tolist(), strict=True))
            edges.extend(zip(mids.tolist(), vb[jj].tolist(), strict=True))
            next_color += 1
    g = igraph.Graph(n=len(color), edges=edges, directed=False)
    return int(g.count_automorphisms(color=color))


def automorphism_generators(graph: UnitGraph) -> list[list[np.ndarray]]:
    """Generators of the automorphism group, each a list of per-group permutations.

    Computed with BLISS on the full layered graph (labels as vertex colours); only used to
    draw random mask-preserving permutations, so the graph is as small as the masks allow.
    """
    import igraph

    offsets = np.cumsum([0, *graph.sizes])
    color = np.concatenate([lab + 1_000_000 * g for g, lab in enumerate(graph.labels)]) if graph.sizes else np.zeros(0)
    _, color = np.unique(color, return_inverse=True)
    color_list = color.tolist()
    edges: list[tuple[int, int]] = []
    for (a, b), values in graph.relations.items():
        uniq = np.unique(values)
        for v in uniq[1:] if len(uniq) <= 2 else uniq:
            ii, jj = np.nonzero(values == v)
            if len(uniq) <= 2:
                edges.extend(zip((offsets[a] + ii).tolist(), (offsets[b] + jj).tolist(), strict=True))
            else:
                mids = len(color_list) + np.arange(len(ii))
                color_list.extend([int(color.max()) + 1 + int(v)] * len(ii))
                edges.extend(zip((offsets[a] + ii).tolist(), mids.tolist(), strict=True))
                edges.extend(zip(mids.tolist(), (offsets[b] + jj).tolist(), strict=True))
    g = igraph.Graph(n=len(color_list), edges=edges, directed=False)
    gens = g.automorphism_group(color=color_list)
    out = []
    for perm in gens:
        p = np.asarray(perm)
        out.append([p[offsets[k] : offsets[k + 1]] - offsets[k] for k in range(len(graph.sizes))])
    return out
