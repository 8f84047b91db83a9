"""Draw and apply permutations of a model's units."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from permsym._errors import PermsymError
from permsym.symmetry.graph import automorphism_generators, build_unit_graph
from permsym.symmetry.structure import Structure

Perms = dict[str, torch.Tensor]


def random_permutation(structure: Structure, generator: torch.Generator | None = None) -> Perms:
    """A random element of the model's symmetry group, one index tensor per group.

    Groups no mask constrains get a uniform permutation (``torch.randperm``). Where masks
    constrain the units, the element is the end of a lazy random walk over generators of the
    mask automorphism group (igraph BLISS): always mask-preserving, every element reachable,
    close to uniform for small groups (not exactly uniform).

    Examples:
        >>> import permsym
        >>> s = permsym.infer_structure(permsym.build("mlp:3-4-2"), torch.zeros(1, 3))
        >>> sorted(random_permutation(s, torch.Generator().manual_seed(0))["fc1"].tolist())
        [0, 1, 2, 3]
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    perms = {g.name: torch.randperm(g.size, generator=gen) for g in structure.groups}
    if not structure.masks:
        return perms
    graph = build_unit_graph(structure, structure.mask_values)
    gens = automorphism_generators(graph)
    current = [np.arange(n) for n in graph.sizes]
    if gens:
        # a lazy random walk (each step applies a random generator or stays put): a fixed number
        # of generator products would keep the parity of the number of transpositions
        steps = 20 * len(gens) + 20
        picks = torch.randint(len(gens), (steps,), generator=gen).tolist()
        moves = (torch.rand(steps, generator=gen) < 0.5).tolist()
        for idx, move in zip(picks, moves, strict=True):
            if move:
                current = [c[p] for c, p in zip(current, gens[idx], strict=True)]
    return {g.name: torch.as_tensor(c, dtype=torch.long) for g, c in zip(structure.groups, current, strict=True)}


def _check_perm(name: str, perm: torch.Tensor, size: int) -> torch.Tensor:
    perm = torch.as_tensor(perm, dtype=torch.long).cpu()
    if perm.shape != (size,) or not torch.equal(torch.sort(perm).values, torch.arange(size)):
        raise PermsymError(
            f"apply_permutation: perms[{name!r}] must be a permutation of 0..{size - 1}; "
            f"got {perm.tolist() if perm.numel() <= 10 else f'a tensor of shape {tuple(perm.shape)}'}."
        )
    return perm


def permute_state(
    state: Mapping[str, torch.Tensor], structure: Structure, perms: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Permute a state dict: ``new[..., i, ...] = old[..., perm[i], ...]`` on every member axis."""
    unknown = set(perms) - {g.name for g in structure.groups}
    if unknown:
        raise PermsymError(f"apply_permutation: no group named {sorted(unknown)[0]!r}; groups are "
                           f"{[g.name for g in structure.groups]}.")
    out = dict(state)
    for group in structure.groups:
        if group.name not in perms:
            continue
        perm = _check_perm(group.name, perms[group.name], group.size)
        for m in group.members:
            if m.name not in out:
                raise PermsymError(f"apply_permutation: state dict has no tensor {m.name!r}.")
            index = (perm[:, None] * m.block + torch.arange(m.block)).reshape(-1)
            tensor = out[m.name]
            out[m.name] = tensor.index_select(m.axis, index.to(tensor.device))
    return out


def apply_permutation(model_or_state_dict, structure: Structure, perms: Mapping[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    """Return a permuted copy of a model (or state dict); the input is not changed.

    Every tensor axis a group moves is re-indexed with that group's permutation, so the
    result computes the same function whenever ``perms`` lies in the model's symmetry group.
    """
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        new_state = permute_state(model.state_dict(), structure, perms)
        clone = copy.deepcopy(model)
        clone.load_state_dict(new_state)
        return clone
    if isinstance(model_or_state_dict, Mapping):
        return permute_state(model_or_state_dict, structure, perms)
    raise TypeError(f"apply_permutation: expected an nn.Module or a state dict; got {type(model_or_state_dict).__name__}.")
