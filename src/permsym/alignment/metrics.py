r"""Stability across runs: consensus distance, stable units, loss barriers, drift of a sequence.

For models $\theta_1..\theta_M$ aligned to a reference, the consensus is
$\bar\theta = \frac1M \sum_m \theta_m$ and the RMS distance to it is
$\big(\frac1M \sum_m \lVert \theta_m - \bar\theta \rVert^2\big)^{1/2}$ (before alignment: the
same on the raw models). The loss barrier between $\theta_A$ and $\theta_B$ along the straight
line $\theta_t = (1-t)\theta_A + t\theta_B$ is

$$B = \max_t \Big[ L(\theta_t) - \big((1-t) L(\theta_A) + t L(\theta_B)\big) \Big] .$$

References:
    Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020
    (barrier); Ainsworth et al., "Git Re-Basin", ICLR 2023 (barrier after weight matching).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from permsym._errors import PermsymError, check_positive_int
from permsym.alignment._units import distance, layout_of, scored_names
from permsym.alignment.api import align, data_tensor, structure_of

__all__ = ["StabilityReport", "TrackReport", "loss_barrier", "rms_to_consensus", "stability", "track"]


def rms_to_consensus(states: Sequence[dict[str, torch.Tensor]], names: Sequence[str]) -> tuple[float, dict[str, float]]:
    r"""Total and per-tensor $\big(\frac1M \sum_m \lVert \theta_m - \bar\theta \rVert^2\big)^{1/2}$."""
    per: dict[str, float] = {}
    for k in names:
        stack = torch.stack([s[k].double() for s in states])
        per[k] = float(((stack - stack.mean(0)) ** 2).sum() / len(states))
    total = sum(per.values()) ** 0.5
    return total, {k: v**0.5 for k, v in per.items()}


def _loss_fn(y: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.mse_loss if y.is_floating_point() else F.cross_entropy


def loss_barrier(
    model_a: nn.Module, model_b: nn.Module, data: Any, *, points: int = 11,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, list[float]]:
    """Barrier (see module docstring) on ``data = (X, y)`` or a data spec; and the loss curve.

    Every floating state tensor is interpolated (masks are equal and stay fixed); the model
    is evaluated in eval mode. Neither model is changed.
    """
    check_positive_int("loss_barrier", "points", points)
    if isinstance(data, str):
        from permsym.data import load

        data = load(data)
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(f"loss_barrier: data must be (X, y) or a data spec string; got {type(data).__name__}.")
    X, y = data
    sa, sb = model_a.state_dict(), model_b.state_dict()
    probe = copy.deepcopy(model_a).eval()
    dtype = next(probe.parameters()).dtype
    X = X.to(dtype)
    y = y.to(dtype) if y.is_floating_point() else y
    loss_fn = loss_fn or _loss_fn(y)
    ts = [i / (points - 1) for i in range(points)] if points > 1 else [0.0]
    curve = []
    with torch.no_grad():
        for t in ts:
            mixed = {k: (1 - t) * v + t * sb[k] if v.is_floating_point() else v for k, v in sa.items()}
            probe.load_state_dict(mixed)
            curve.append(float(loss_fn(probe(X), y)))
    barrier = max(c - ((1 - t) * curve[0] + t * curve[-1]) for t, c in zip(ts, curve, strict=True))
    return barrier, curve


@dataclass(frozen=True)
class StabilityReport:
    """Stability of many runs of one architecture after alignment to a reference."""

    method: str
    reference: int
    rms_to_consensus_before: float
    rms_to_consensus_after: float
    stable_unit_fraction: float
    threshold: float
    layers: tuple[dict[str, Any], ...]
    groups: tuple[dict[str, Any], ...]
    barrier_before: float | None = None
    barrier_after: float | None = None
    barriers: tuple[dict[str, float], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "reference": self.reference,
            "rms_to_consensus_before": self.rms_to_consensus_before,
            "rms_to_consensus_after": self.rms_to_consensus_after,
            "stable_unit_fraction": self.stable_unit_fraction,
            "threshold": self.threshold,
            "layers": list(self.layers),
            "groups": list(self.groups),
        }
        if self.barrier_before is not None:
            out |= {"barrier_before": self.barrier_before, "barrier_after": self.barrier_after,
                    "barriers": list(self.barriers)}
        return out


def _medoid(models: Sequence[nn.Module], method: str, data: Any) -> int:
    m = len(models)
    cost = torch.zeros(m, m, dtype=torch.float64)
    for i in range(m):
        for j in range(i + 1, m):
            cost[i, j] = cost[j, i] = align(models[i], models[j], method=method, data=data).distance_after
    return int(cost.sum(1).argmin())


def stability(
    models: Sequence[nn.Module], *, method: str = "weight", reference: str = "first", data: Any = None,
    threshold: float = 0.9, points: int = 11,
) -> StabilityReport:
    """Align every model to a reference (``first`` or ``medoid``) and measure what stays put.

    A unit is stable when its match similarity with the reference unit exceeds ``threshold``.
    With ``data`` (``(X, y)`` or a spec), the mean loss barrier between the reference and each
    other model is measured before and after alignment.
    """
    if len(models) < 2:
        raise PermsymError(f"stability: need at least 2 models; got {len(models)}.")
    if reference not in ("first", "medoid"):
        raise ValueError(f"stability: reference must be 'first' or 'medoid'; got {reference!r}.")
    if isinstance(data, str):
        from permsym.data import load

        data = load(data)
    loaded = data_tensor(data, call="stability") if data is not None else None
    x_only = loaded if method == "activation" else None
    ref = 0 if reference == "first" else _medoid(models, method, x_only)
    structure = structure_of(models[ref], loaded, call="stability")
    results = {i: align(models[ref], m, method=method, data=x_only, structure=structure)
               for i, m in enumerate(models) if i != ref}
    lay = layout_of(structure)
    raw = [m.state_dict() for m in models]
    aligned = [raw[i] if i == ref else results[i].model.state_dict() for i in range(len(models))]
    names = scored_names(raw[ref], lay)
    before, per_before = rms_to_consensus(raw, names)
    after, per_after = rms_to_consensus(aligned, names)
    layers = tuple({"name": k, "rms_before": per_before[k], "rms_after": per_after[k]} for k in names)
    groups, stable, total = [], 0, 0
    for g in structure.groups:
        sims = torch.cat([r.similarity[g.name].double() for r in results.values()])
        n_stable = int((sims > threshold).sum())
        stable, total = stable + n_stable, total + sims.numel()
        groups.append({"group": g.name, "units": g.size, "stable_fraction": n_stable / max(1, sims.numel()),
                       "mean_similarity": float(sims.mean()) if sims.numel() else None})
    report: dict[str, Any] = {}
    if data is not None:
        xy = tuple(data)
        rows = []
        for i, r in results.items():
            b0, _ = loss_barrier(models[ref], models[i], xy, points=points)
            b1, _ = loss_barrier(models[ref], r.model, xy, points=points)
            rows.append({"model": i, "barrier_before": b0, "barrier_after": b1})
        report = {"barrier_before": sum(r["barrier_before"] for r in rows) / len(rows),
                  "barrier_after": sum(r["barrier_after"] for r in rows) / len(rows), "barriers": tuple(rows)}
    return StabilityReport(
        method=method, reference=ref, rms_to_consensus_before=before, rms_to_consensus_after=after,
        stable_unit_fraction=stable / max(1, total), threshold=threshold, layers=layers, groups=tuple(groups),
        **report,
    )


@dataclass(frozen=True)
class TrackReport:
    """Drift along a sequence of checkpoints, each aligned to its aligned predecessor."""

    method: str
    steps: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "steps": list(self.steps)}


def track(models: Sequence[nn.Module], *, method: str = "weight", data: Any = None) -> TrackReport:
    r"""For each step $k \to k+1$: naive drift $\lVert\theta_{k+1}-\theta_k\rVert$, aligned drift, re-ordered units.

    Checkpoint $k+1$ is aligned to the *aligned* checkpoint $k$, so all live in the frame of
    the first. A unit is re-ordered at a step when the unit of checkpoint $k+1$ matched to it
    is not the one at the same index (``reordered`` lists those indices of checkpoint $k$).
    """
    if len(models) < 2:
        raise PermsymError(f"track: need at least 2 checkpoints; got {len(models)}.")
    x = data_tensor(data, call="track") if method == "activation" else None
    structure = structure_of(models[0], x, call="track")
    names = scored_names(models[0].state_dict(), layout_of(structure))
    prev_model, prev_perm = models[0], {g.name: torch.arange(g.size) for g in structure.groups}
    steps = []
    for k in range(1, len(models)):
        r = align(prev_model, models[k], method=method, data=x, structure=structure)
        naive = distance(models[k - 1].state_dict(), models[k].state_dict(), names)
        moved = {g: torch.nonzero(prev_perm[g] != p).flatten() for g, p in r.permutations.items()}
        steps.append({
            "step": k, "naive_drift": naive, "aligned_drift": r.distance_after,
            "reordered_units": int(sum(v.numel() for v in moved.values())),
            "reordered": {g: prev_perm[g][v].tolist() for g, v in moved.items() if v.numel()},
        })
        prev_model, prev_perm = r.model, r.permutations
    return TrackReport(method=method, steps=tuple(steps))
