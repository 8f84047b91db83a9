"""Stability metrics: consensus distance by hand, tracking of planted re-orderings, barriers."""

from __future__ import annotations

import pytest
import torch

import permsym
from permsym.alignment.metrics import loss_barrier, rms_to_consensus, stability, track
from permsym.symmetry import example_input
from tests.alignment.helpers import model64, planted


def test_rms_to_consensus_by_hand() -> None:
    states = [{"w": torch.tensor([0.0, 0.0], dtype=torch.float64)}, {"w": torch.tensor([2.0, 4.0], dtype=torch.float64)}]
    total, per = rms_to_consensus(states, ["w"])
    # mean (1, 2); squared distances 5 and 5; mean 5
    assert abs(total - 5**0.5) < 1e-15 and abs(per["w"] - 5**0.5) < 1e-15


def test_stability_of_planted_copies_is_perfect_after_alignment() -> None:
    model = model64("mlp:10-20-20-3", seed=0)
    copies = [model] + [planted(model, noise=0.0, seed=s)[2] for s in (1, 2, 3)]
    report = stability(copies, method="weight", reference="medoid", threshold=0.99)
    assert report.rms_to_consensus_before > 0.1
    assert report.rms_to_consensus_after < 1e-12
    assert report.stable_unit_fraction == 1.0
    assert report.barrier_before is None and "barrier_before" not in report.to_json()


def test_track_counts_the_units_that_moved() -> None:
    model = model64("mlp:10-20-20-3", seed=0)
    s = permsym.infer_structure(model, example_input(model))
    swap = torch.arange(20)
    swap[[3, 7]] = swap[[7, 3]]
    moved = permsym.apply_permutation(model, s, {"fc1": swap})
    report = track([model, model, moved, moved], method="weight")
    assert [st["reordered_units"] for st in report.steps] == [0, 2, 0]
    assert report.steps[1]["reordered"] == {"fc1": [3, 7]}
    assert report.steps[1]["naive_drift"] > 0.1 and report.steps[1]["aligned_drift"] < 1e-12


def test_barrier_of_identical_models_is_zero_and_errors() -> None:
    model = model64("mlp:10-20-3", seed=0)
    X = torch.randn(50, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(3, (50,), generator=torch.Generator().manual_seed(1))
    barrier, curve = loss_barrier(model, model, (X, y), points=5)
    assert abs(barrier) < 1e-12 and len(curve) == 5
    with pytest.raises(permsym.PermsymError, match=r"^stability: need at least 2 models; got 1\.$"):
        stability([model])
    with pytest.raises(ValueError, match=r"^stability: reference must be 'first' or 'medoid'; got 'last'\.$"):
        stability([model, model], reference="last")


@pytest.mark.slow
def test_weight_matching_lowers_the_barrier_on_digits() -> None:
    from permsym.data import load
    from permsym.train import fit

    X, y = load("digits", dtype=torch.float64)
    arch = "mlp:64-256-256-10"
    models = []
    for seed in (0, 1):
        m = model64(arch, seed=seed)
        fit(m, (X, y), epochs=5, lr=0.1, batch_size=32, seed=seed)
        models.append(m)
    result = permsym.align(models[0], models[1], method="weight")
    before, _ = loss_barrier(models[0], models[1], (X, y))
    after, _ = loss_barrier(models[0], result.model, (X, y))
    print(f"digits {arch}: loss barrier before {before:.4f}, after weight matching {after:.4f}")
    assert after < before, (before, after)
