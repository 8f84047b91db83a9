"""Weight matching: the forward start, the assignment shortcut, unit cosines and the structure cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import permsym
from permsym.alignment import align
from permsym.alignment._units import layout_of, unit_cosines
from permsym.alignment.api import structure_of
from permsym.alignment.result import cosine_similarity_per_unit
from permsym.alignment.weight_matching import _assign, match_weights
from permsym.symmetry import example_input
from tests.alignment.helpers import model64

ARCHS = ["mlp:12-24-24-4", "convnet:1x8x8-6-8-5", "resmlp:10-16-4,blocks=2,hidden=12"]


@pytest.mark.parametrize("init", ["forward", "identity"])
@pytest.mark.parametrize("arch", ["mlp:16-48-48-48-5", "resmlp:10-16-4,blocks=2,hidden=12", "convnet:1x8x8-6-8-5"])
def test_both_starts_never_decrease_and_score_exactly(arch: str, init: str) -> None:
    a, b = model64(arch, seed=0), model64(arch, seed=1)
    lay = layout_of(permsym.infer_structure(a, example_input(a)))
    sa, sb = a.state_dict(), b.state_dict()
    wm = match_weights(sa, sb, lay, generator=torch.Generator().manual_seed(3), init=init, restarts=2)
    steps = (wm.objective_identity, *wm.history)
    assert all(y >= x for x, y in zip(steps, steps[1:], strict=False)), steps
    assert abs(wm.history[-1] - wm.objective) < 1e-9 * abs(wm.objective)
    names = [k for k in sa if sa[k].is_floating_point() and k not in lay.masks]
    aligned = permsym.apply_permutation(b, lay.structure, {g.name: p for g, p in zip(lay.structure.groups, wm.perms,
                                                                                          strict=True)})
    exact = sum(float((sa[k] * aligned.state_dict()[k]).sum()) for k in names)
    assert abs(exact - wm.objective) < 1e-9 * abs(exact)


def test_forward_start_beats_identity_start_on_independent_mlps() -> None:
    # independent inits: from the identity the outgoing-weight terms pair random partners first;
    # the layer-by-layer start is the better local optimum here (every sweep order)
    a, b = model64("mlp:20-64-64-64-5", seed=0), model64("mlp:20-64-64-64-5", seed=1)
    fwd = align(a, b, method="weight", init="forward").objective
    ident = [align(a, b, method="weight", init="identity", generator=torch.Generator().manual_seed(s)).objective
             for s in range(3)]
    assert fwd > max(ident), (fwd, ident)


def test_unknown_init_is_rejected() -> None:
    a = model64("mlp:4-6-3", seed=0)
    with pytest.raises(ValueError, match=r"init must be one of forward, identity; got 'sorted'"):
        align(a, a, method="weight", init="sorted")


def test_assign_shortcut_and_assignment_agree_on_the_optimum() -> None:
    gen = np.random.default_rng(0)
    for n, dominant in [(1, False), (7, True), (30, True), (30, False), (64, False)]:
        cost = gen.standard_normal((n, n))
        if dominant:
            cost[np.arange(n), gen.permutation(n)] += 10.0  # row argmaxes form a permutation
        cols = _assign(cost, None)
        assert sorted(cols.tolist()) == list(range(n))
        rows, best = linear_sum_assignment(cost, maximize=True)
        assert abs(cost[np.arange(n), cols].sum() - cost[rows, best].sum()) < 1e-12
    cost = np.eye(4) * 5.0
    allowed = np.ones((4, 4), dtype=bool)
    allowed[0, 0] = allowed[1, 1] = False  # the argmax of two rows is not allowed
    cols = _assign(cost, allowed)
    assert all(allowed[i, c] for i, c in enumerate(cols)) and sorted(cols.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("arch", ARCHS)
def test_unit_cosines_equal_the_feature_vector_cosines(arch: str) -> None:
    a, b = model64(arch, seed=0), model64(arch, seed=1)
    lay = layout_of(permsym.infer_structure(a, example_input(a)))
    sa, sb = a.state_dict(), b.state_dict()
    fast, ref = unit_cosines(sa, sb, lay), cosine_similarity_per_unit(sa, sb, lay)
    assert fast.keys() == ref.keys()
    for g in ref:
        assert torch.allclose(fast[g], ref[g], rtol=1e-12, atol=1e-14), g


def test_structure_is_traced_once_per_architecture() -> None:
    a, b = model64("mlp:5-7-3", seed=0), model64("mlp:5-7-3", seed=1)
    assert structure_of(a) is structure_of(b)
    c = model64("mlp:5-8-3", seed=0)
    assert structure_of(c) is not structure_of(a) and structure_of(c).groups[0].size == 8
    # same arch string, other dtype: traced again
    d = permsym.build("mlp:5-7-3", seed=0)
    d.permsym_arch = "mlp:5-7-3"
    assert structure_of(d) is not structure_of(a)
