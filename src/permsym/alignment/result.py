"""The frozen result of an alignment and the per-unit similarities it reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from permsym.alignment._units import Layout, unit_features

__all__ = ["AlignmentResult", "cosine_similarity_per_unit"]


@dataclass(frozen=True)
class AlignmentResult:
    r"""An alignment of ``other`` onto ``reference``.

    Attributes:
        method: ``"sort"``, ``"sorensen"``, ``"weight"`` or ``"activation"``.
        permutations: ``{group: LongTensor}``, gather convention: unit ``i`` of the aligned
            model is unit ``permutations[g][i]`` of ``other``.
        model: the aligned copy of ``other`` (``other`` itself is not changed).
        objective: $J = \sum_k \langle A_k, \pi(B)_k \rangle$ at the result (the weight-matching
            objective, reported for every method so that methods compare).
        objective_identity: $J$ before alignment.
        distance_before, distance_after: $\lVert A - B \rVert$ and $\lVert A - \pi(B) \rVert$
            over the floating state tensors (masks excluded).
        similarity: ``{group: Tensor(n)}`` match similarity of each reference unit with the
            unit matched to it (cosine of connection vectors for sort and weight, Sorensen-Dice
            for sorensen, activation correlation for activation).
        sweeps: coordinate-descent sweeps (weight matching; 1 otherwise).
        history: objective after each sweep (weight matching).
        objectives: final objective of each restart (weight matching).
        notes: facts the user should know, e.g. groups whose masks admit only the identity.
    """

    method: str
    permutations: dict[str, torch.Tensor]
    model: nn.Module
    objective: float
    objective_identity: float
    distance_before: float
    distance_after: float
    similarity: dict[str, torch.Tensor]
    sweeps: int = 1
    history: tuple[float, ...] = ()
    objectives: tuple[float, ...] = ()
    notes: tuple[str, ...] = ()

    def reordered_units(self) -> dict[str, int]:
        """Number of units per group that the alignment moved (``perm[i] != i``)."""
        return {g: int((p != torch.arange(p.numel())).sum()) for g, p in self.permutations.items()}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the model itself is left out)."""
        return {
            "method": self.method,
            "objective": self.objective,
            "objective_identity": self.objective_identity,
            "distance_before": self.distance_before,
            "distance_after": self.distance_after,
            "sweeps": self.sweeps,
            "history": list(self.history),
            "objectives_over_restarts": list(self.objectives),
            "reordered_units": self.reordered_units(),
            "mean_similarity": {g: float(s.mean()) if s.numel() else None for g, s in self.similarity.items()},
            "permutations": {g: p.tolist() for g, p in self.permutations.items()},
            "notes": list(self.notes),
        }


def cosine_similarity_per_unit(
    sa: Mapping[str, torch.Tensor], aligned: Mapping[str, torch.Tensor], lay: Layout
) -> dict[str, torch.Tensor]:
    r"""$\cos(a_i, b_i)$ of the connection vectors of reference unit $i$ and aligned unit $i$."""
    ident = [torch.arange(n) for n in lay.sizes]
    out = {}
    for gi, g in enumerate(lay.structure.groups):
        a = unit_features(sa, lay, gi, ident).double()
        b = unit_features(aligned, lay, gi, ident).double()
        denom = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)
        out[g.name] = (a * b).sum(1) / denom
    return out
