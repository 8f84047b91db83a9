"""Exact group orders against brute force, planted symmetries and an independent BLISS count."""

from __future__ import annotations

import itertools
import math

import igraph
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import permsym
from permsym.layers import MaskedLinear
from permsym.symmetry import (
    apply_permutation,
    count_symmetries,
    example_input,
    formula_log10_order,
    infer_structure,
    random_permutation,
)
from tests.assertions import relative_error


def _set_masks(model: nn.Module, masks: list[torch.Tensor]) -> nn.Module:
    layers = [m for m in model.modules() if isinstance(m, MaskedLinear)]
    with torch.no_grad():
        for layer, mask in zip(layers, masks, strict=True):
            layer.mask.copy_(mask.to(layer.mask.dtype))
            layer.weight.mul_(layer.mask)
    return model


def brute_force(model: nn.Module, x: torch.Tensor | None = None) -> tuple[int, int]:
    """(|G|, |Stab(theta)|) by enumerating every tuple of per-group permutations.

    G: tuples that keep every mask buffer (each is also checked to keep the function).
    Stab: tuples that keep the whole state dict.
    """
    model = model.double().eval()
    x = example_input(model) if x is None else x.double()
    s = infer_structure(model, x)
    state = model.state_dict()
    xs = torch.randn(7, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(xs)
    order = stab = 0
    for combo in itertools.product(*(itertools.permutations(range(g.size)) for g in s.groups)):
        perms = {g.name: torch.tensor(p) for g, p in zip(s.groups, combo, strict=True)}
        new = apply_permutation(state, s, perms)
        if all(torch.equal(new[m], state[m]) for m in s.masks):
            order += 1
            permuted = apply_permutation(model, s, perms).eval()
            with torch.no_grad():
                assert relative_error(permuted(xs), y) < 1e-10
        stab += all(torch.equal(new[k], state[k]) for k in state)
    return order, stab


def _exact(log10_value: float) -> int:
    return round(10**log10_value)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("mlp:3-3-2-2", 12), ("convnet:1x4x4-2-3-2", 12), ("resmlp:2-3-2,blocks=1,hidden=2", 12), ("mlp:2-4-1,act=tanh", 24)],
)
def test_unmasked_tiny_nets_match_brute_force(arch: str, expected: int) -> None:
    model = permsym.build(arch)
    order, stab = brute_force(model)
    c = count_symmetries(model, example_input(model))
    assert order == expected == _exact(c.log10_order) == _exact(c.log10_order_unmasked)
    assert stab == 1 == _exact(c.log10_stabilizer)


def masked_net(masks: list[torch.Tensor], seed: int = 0) -> nn.Module:
    """A masked ReLU MLP with the given masks (any masks, distinct or not)."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for k, m in enumerate(masks):
        layers.append(MaskedLinear(m.shape[1], m.shape[0], m, generator=gen))
        if k < len(masks) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@given(widths=st.lists(st.integers(2, 4), min_size=2, max_size=3), n_in=st.integers(2, 4), seed=st.integers(0, 10**6), density=st.sampled_from([0.2, 0.4, 0.6]))
def test_random_masks_match_brute_force(widths: list[int], n_in: int, seed: int, density: float) -> None:
    """Random (not distinct) masks on tiny nets have rich symmetry groups; count them all."""
    if math.prod(math.factorial(w) for w in widths) > 600:  # keep the enumeration small
        widths = widths[:2]
    dims = [n_in, *widths, 2]
    gen = torch.Generator().manual_seed(seed)
    masks = [(torch.rand(o, i, generator=gen) < density) for i, o in zip(dims[:-1], dims[1:], strict=True)]
    model = masked_net(masks, seed)
    x = torch.zeros(1, n_in)
    order, stab = brute_force(model, x)
    c = count_symmetries(model, x)
    assert _exact(c.log10_order) == order
    assert _exact(c.log10_stabilizer) == stab


def _bliss_on_mask_graph(masks: list[torch.Tensor]) -> int:
    """Independent reference: BLISS on the whole layered mask graph, inputs/outputs own colours."""
    sizes = [masks[0].shape[1]] + [m.shape[0] for m in masks]
    offsets = np.cumsum([0, *sizes])
    colors: list[int] = []
    for layer, n in enumerate(sizes):
        fixed = layer in (0, len(sizes) - 1)
        colors.extend([len(sizes) + offsets[layer] + i for i in range(n)] if fixed else [layer] * n)
    edges = []
    for k, m in enumerate(masks):
        rows, cols = torch.nonzero(m, as_tuple=True)
        edges += list(zip((offsets[k + 1] + rows).tolist(), (offsets[k] + cols).tolist(), strict=True))
    return int(igraph.Graph(n=int(offsets[-1]), edges=edges).count_automorphisms(color=colors))


@given(seed=st.integers(0, 10**6), density=st.sampled_from([0.05, 0.1, 0.2, 0.5]))
def test_masked_order_matches_an_independent_bliss_count(seed: int, density: float) -> None:
    dims = [6, 12, 10, 3]
    gen = torch.Generator().manual_seed(seed)
    masks = [(torch.rand(o, i, generator=gen) < density) for i, o in zip(dims[:-1], dims[1:], strict=True)]
    c = count_symmetries(masked_net(masks), torch.zeros(1, 6))
    reference = _bliss_on_mask_graph(masks)
    # both are exact integer counts; log10 is compared at float precision
    assert abs(c.log10_order - math.log10(reference)) < 1e-9


@pytest.mark.parametrize("k", [2, 3, 5])
def test_k_planted_identical_units_give_k_factorial(k: int) -> None:
    model = permsym.build("mlp:8-10-6-2,density=0.3,mask_seed=0")
    fc1, fc2 = model.fc1.mask.clone(), model.fc2.mask.clone()
    fc1[1:k] = fc1[0]  # k units with the same inputs ...
    fc2[:, 1:k] = fc2[:, [0]]  # ... and the same outputs
    _set_masks(model, [fc1, fc2, model.out.mask])
    c = count_symmetries(model, example_input(model))
    assert _exact(c.log10_order) == math.factorial(k)
    # a random element of the group keeps the function
    s = infer_structure(model.double(), example_input(model.double()))
    perms = random_permutation(s, torch.Generator().manual_seed(1))
    x = torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(apply_permutation(model, s, perms)(x), model(x)) < 1e-10
    new_masks = apply_permutation(model.state_dict(), s, perms)
    assert all(torch.equal(new_masks[m], model.state_dict()[m]) for m in s.masks)


@pytest.mark.parametrize("arch", ["mlp:16-64-64-10,density=0.1,mask_seed=3", "mlp:5-20-20-2,density=0.5,mask_seed=1"])
def test_distinct_masks_give_the_trivial_group(arch: str) -> None:
    model = permsym.build(arch)
    c = count_symmetries(model, example_input(model))
    assert c.log10_order == 0.0 and c.order == 1 and c.masked
    assert c.log10_order_unmasked > 10


def test_sign_flips_for_odd_activations_only() -> None:
    tanh = count_symmetries(permsym.build("mlp:3-4-5-2,act=tanh"), torch.zeros(1, 3))
    relu = count_symmetries(permsym.build("mlp:3-4-5-2"), torch.zeros(1, 3))
    expected = math.log10(math.factorial(4) * math.factorial(5) * 2**9)
    assert tanh.log10_order_with_sign_flips == pytest.approx(expected, rel=1e-12)
    assert relu.log10_order_with_sign_flips is None


def test_orbit_shrinks_with_duplicate_and_dead_units() -> None:
    model = permsym.build("mlp:4-6-3").double()
    with torch.no_grad():
        model.fc1.weight[1] = model.fc1.weight[0]  # unit 1 is a copy of unit 0
        model.fc1.bias[1] = model.fc1.bias[0]
        model.out.weight[:, 1] = model.out.weight[:, 0]
        for dead in (3, 4, 5):  # three dead units: no weights, no bias
            model.fc1.weight[dead] = 0
            model.fc1.bias[dead] = 0
            model.out.weight[:, dead] = 0
    c = count_symmetries(model, torch.zeros(1, 4))
    _, stab = brute_force(model)
    assert stab == 2 * 6 == _exact(c.log10_stabilizer)
    assert c.log10_orbit == pytest.approx(math.log10(720 / 12), rel=1e-12)
    assert c.groups[0]["distinct_units"] == 3


def test_formula_matches_the_exact_count_without_masks() -> None:
    for arch in ["mlp:5-30-40-2", "convnet:1x8x8-6-9-3", "resmlp:4-12-2,blocks=2,hidden=7"]:
        model = permsym.build(arch)
        c = count_symmetries(model, example_input(model))
        assert c.log10_order == pytest.approx(formula_log10_order(arch), rel=1e-12)
    assert formula_log10_order("mlp:784-1024-1024-10") == pytest.approx(2 * math.lgamma(1025) / math.log(10), rel=1e-12)


def test_regular_masks_need_bliss_and_match_brute_force() -> None:
    """A cyclic 4x4 mask: refinement cannot split the units, the blocks are not constant."""
    cycle = torch.zeros(4, 4, dtype=torch.bool)
    for i in range(4):
        cycle[i, i] = cycle[i, (i + 1) % 4] = True
    masks = [torch.ones(4, 3, dtype=torch.bool), cycle, torch.ones(2, 4, dtype=torch.bool)]
    model = masked_net(masks)
    x = torch.zeros(1, 3)
    order, _ = brute_force(model, x)
    c = count_symmetries(model, x)
    assert order == 8 == _exact(c.log10_order)  # the 8-cycle's side-preserving automorphisms


@pytest.mark.parametrize("k", [2, 3])
def test_random_permutation_reaches_every_element_of_a_small_group(k: int) -> None:
    """Draws from the k! mask automorphisms of k planted units must hit all of them (odd ones too)."""
    model = permsym.build("mlp:8-10-6-2,density=0.3,mask_seed=0")
    fc1, fc2 = model.fc1.mask.clone(), model.fc2.mask.clone()
    fc1[1:k] = fc1[0]
    fc2[:, 1:k] = fc2[:, [0]]
    _set_masks(model, [fc1, fc2, model.out.mask])
    s = infer_structure(model, example_input(model))
    seen = {tuple(random_permutation(s, torch.Generator().manual_seed(seed))["fc1"][:k].tolist()) for seed in range(60)}
    assert seen == set(itertools.permutations(range(k)))  # P(miss one) < 6 (5/6)^60 ~ 1e-4, seeds fixed


def test_order_is_an_exact_integer() -> None:
    c = count_symmetries(permsym.build("mlp:4-17-2"), torch.zeros(1, 4))
    assert c.order == math.factorial(17) and c.to_json()["order"] == 355687428096000
