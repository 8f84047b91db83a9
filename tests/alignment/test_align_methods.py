"""Alignment recovers planted permutations and never changes the function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import permsym
from permsym.alignment import align
from permsym.alignment._units import layout_of
from permsym.alignment.sorensen import dice_matrix, greedy_match
from permsym.alignment.weight_matching import match_weights
from permsym.symmetry import example_input
from tests.alignment.helpers import inverse, model64, planted, symmetric_masked_mlp

ARCHS = ["mlp:12-24-24-4", "convnet:1x8x8-6-8-5", "resmlp:10-16-4,blocks=2,hidden=12"]


def _outputs_equal(a, b, x) -> float:  # type: ignore[no-untyped-def]
    a.eval(), b.eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_matching_recovers_planted_permutation(arch: str) -> None:
    model = model64(arch, seed=1)
    structure, perms, other = planted(model, noise=0.01, seed=2)
    result = align(model, other, method="weight")
    for g, p in inverse(perms).items():
        assert torch.equal(result.permutations[g], p), g
    assert result.distance_after < 0.05 * result.distance_before, (result.distance_before, result.distance_after)
    x = torch.randn(16, example_input(model).shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # a permutation only re-indexes: float64 sums in a new order differ by rounding (~1e-16)
    assert _outputs_equal(result.model, other, x) < 1e-10


def test_weight_matching_recovers_mask_automorphism() -> None:
    model = symmetric_masked_mlp(seed=3)
    structure, perms, other = planted(model, noise=0.01, seed=5)
    assert any(not torch.equal(p, torch.arange(p.numel())) for p in perms.values()), "draw a non-trivial element"
    result = align(model, other, method="weight")
    for g, p in inverse(perms).items():
        assert torch.equal(result.permutations[g], p), g
    for name in structure.masks:
        assert torch.equal(result.model.state_dict()[name], model.state_dict()[name]), name
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert _outputs_equal(result.model, other, x) < 1e-10


def test_distinct_masks_give_identity_and_say_so() -> None:
    model = model64("mlp:8-10-10-3,density=0.4,mask_seed=1", seed=0)
    other = model64("mlp:8-10-10-3,density=0.4,mask_seed=1", seed=1)
    result = align(model, other, method="weight")
    for p in result.permutations.values():
        assert torch.equal(p, torch.arange(p.numel()))
    assert any("admit only the identity" in n for n in result.notes), result.notes


def test_objective_never_decreases_and_history_is_exact() -> None:
    a, b = model64("mlp:16-48-48-48-5", seed=0), model64("mlp:16-48-48-48-5", seed=1)
    lay = layout_of(permsym.infer_structure(a, example_input(a)))
    sa, sb = a.state_dict(), b.state_dict()
    wm = match_weights(sa, sb, lay, generator=torch.Generator().manual_seed(3))
    steps = (wm.objective_identity, *wm.history)
    assert all(y >= x for x, y in zip(steps, steps[1:], strict=False)), steps
    assert wm.sweeps >= 2 and wm.history[-1] > wm.objective_identity
    # the incremental objective equals the one recomputed from the permuted state (float64)
    assert abs(wm.history[-1] - wm.objective) < 1e-9 * abs(wm.objective)


def test_single_group_weight_matching_is_the_assignment_optimum() -> None:
    # one hidden layer: J is linear in the only permutation, so one LAP is optimal
    a, b = model64("mlp:7-30-3", seed=0), model64("mlp:7-30-3", seed=1)
    s = permsym.infer_structure(a, example_input(a))
    result = align(a, b, method="weight", structure=s)
    cost = (a.fc1.weight @ b.fc1.weight.T + torch.outer(a.fc1.bias, b.fc1.bias) + a.out.weight.T @ b.out.weight)
    rows, cols = linear_sum_assignment(cost.detach().numpy(), maximize=True)
    best = float(cost.detach().numpy()[rows, cols].sum())
    got = float(cost.detach().numpy()[np.arange(30), result.permutations["fc1"].numpy()].sum())
    assert abs(got - best) < 1e-10 * abs(best)


def test_restarts_report_spread_and_keep_the_best() -> None:
    a, b = model64("mlp:16-40-40-40-5", seed=0), model64("mlp:16-40-40-40-5", seed=2)
    result = align(a, b, method="weight", restarts=4, generator=torch.Generator().manual_seed(0))
    assert len(result.objectives) == 4
    assert abs(result.objective - max(result.objectives)) < 1e-9 * abs(result.objective)


@pytest.mark.parametrize("method", ["sort", "sorensen", "activation"])
@pytest.mark.parametrize("arch", ARCHS)
def test_other_methods_recover_exact_permutations(method: str, arch: str) -> None:
    model = model64(arch, seed=1)
    structure, perms, other = planted(model, noise=0.0, seed=4)
    x = torch.randn(64, example_input(model).shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = align(model, other, method=method, data=x)
    for g, p in inverse(perms).items():
        # dead ReLU units (constant activations) carry no correlation: only live ones must match
        live = result.similarity[g] > 0.5 if method == "activation" else torch.ones(p.numel(), dtype=torch.bool)
        assert live.float().mean() > 0.7, (method, g)
        assert torch.equal(result.permutations[g][live], p[live]), (method, g)
    if method != "activation":
        assert result.distance_after < 1e-12
    assert _outputs_equal(result.model, other, x) < 1e-10
    if method != "activation":
        for sim in result.similarity.values():
            assert torch.allclose(sim, torch.ones_like(sim))


def test_inputs_are_not_mutated() -> None:
    a, b = model64("mlp:6-9-3", seed=0), model64("mlp:6-9-3", seed=1)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    align(a, b, method="weight")
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())


def test_dice_and_greedy_against_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=gen, dtype=torch.float64), torch.randn(6, 7, generator=gen, dtype=torch.float64)
    d = dice_matrix(a, b, chunk_elements=10)
    for i in range(5):
        for j in range(6):
            x, y = a[i].abs(), b[j].abs()
            assert abs(float(d[i, j]) - float(2 * torch.minimum(x, y).sum() / (x + y).sum())) < 1e-14
    sim = torch.rand(6, 6, generator=gen, dtype=torch.float64).numpy()
    perm = greedy_match(sim)
    free_r, free_c, expect = set(range(6)), set(range(6)), {}
    while free_r:
        i, j = max(((i, j) for i in free_r for j in free_c), key=lambda ij: sim[ij])
        expect[i] = j
        free_r.remove(i), free_c.remove(j)
    assert perm.tolist() == [expect[i] for i in range(6)]


def test_bad_inputs_have_one_line_messages() -> None:
    a = model64("mlp:6-9-3", seed=0)
    with pytest.raises(ValueError, match=r"^align: method must be one of sort, sorensen, weight, activation; got 'hungarian'\.$"):
        align(a, a, method="hungarian")
    with pytest.raises(ValueError, match=r"^align: method 'activation' needs data"):
        align(a, a, method="activation")
    with pytest.raises(permsym.PermsymError, match=r"^align: parameter 'fc1.weight' has shape \(9, 6\) in the reference and \(10, 6\)"):
        align(a, model64("mlp:6-10-3", seed=0), method="weight")
    m1 = model64("mlp:6-9-3,density=0.5,mask_seed=0", seed=0)
    m2 = model64("mlp:6-9-3,density=0.5,mask_seed=1", seed=0)
    with pytest.raises(permsym.PermsymError, match=r"^align: mask 'fc1.mask' differs between the models"):
        align(m1, m2, method="weight")
