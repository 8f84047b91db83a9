"""One module per claim of the paper; :func:`run_experiments` runs them with a resumable cache."""

from __future__ import annotations

from permsym.experiments.base import SCALES, Experiment, Verdict, config_key
from permsym.experiments.c1_counts import Counts
from permsym.experiments.c2_equilibrium import Equilibrium
from permsym.experiments.c4_curvature import CurvatureVsWidth
from permsym.experiments.c5_overlap import Overlap
from permsym.experiments.r1_prepruning import PrePruning
from permsym.experiments.r2_reordering import Reordering
from permsym.experiments.r3_orthopoly import OrthoPolyActivations
from permsym.experiments.r4_modular import ModularVsMonolithic
from permsym.experiments.runner import run_experiments
from permsym.experiments.u1_noise_aware import NoiseAware

__all__ = ["EXPERIMENTS", "SCALES", "Experiment", "Verdict", "config_key", "experiments_by_name", "run_experiments"]


def EXPERIMENTS() -> list[Experiment]:  # noqa: N802 - a registry, called like a constant
    """All experiments, in report order."""
    return [Counts(), Equilibrium(), CurvatureVsWidth(), Overlap(), PrePruning(), Reordering(), OrthoPolyActivations(), ModularVsMonolithic(), NoiseAware()]


def experiments_by_name(only: list[str] | None = None) -> list[Experiment]:
    """The registered experiments, or those named in ``only`` (unknown names are an error)."""
    from permsym._errors import PermsymError

    available = EXPERIMENTS()
    if not only:
        return available
    names = [e.name for e in available]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise PermsymError(f"paper: unknown experiment {unknown[0]!r}; expected one of {', '.join(names)}.")
    return [e for e in available if e.name in only]
