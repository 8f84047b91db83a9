"""A permutation drawn from the inferred structure never changes the function (property)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import permsym
from permsym.symmetry import apply_permutation, example_input, infer_structure, random_permutation
from tests.assertions import relative_error
from tests.strategies import any_arch, convnet_arch, masked_mlp_arch, mlp_arch, resmlp_arch


def _randomise_buffers(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give BatchNorm running statistics distinct values so that they are really tested."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))


def check_invariance(arch: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = permsym.build(arch, seed=seed).double().eval()
    _randomise_buffers(model, gen)
    structure = infer_structure(model, example_input(model))
    perms = random_permutation(structure, gen)
    permuted = apply_permutation(model, structure, perms).eval()
    x = torch.randn(16, example_input(model).shape[1], generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y, y_perm = model(x), permuted(x)
    # float64 forward passes summing in a different order: rounding ~1e-15, budget 1e-10
    assert relative_error(y_perm, y) < 1e-10, arch
    moved = any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    params_equal = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), permuted.state_dict().values(), strict=True))
    # random init gives distinct units, so a non-identity permutation moves the parameters
    assert params_equal != moved, (arch, perms)


@given(arch=any_arch, seed=st.integers(0, 2**16))
def test_random_permutation_keeps_the_function(arch: str, seed: int) -> None:
    check_invariance(arch, seed)


@pytest.mark.parametrize("strategy", [mlp_arch(), masked_mlp_arch(), convnet_arch(), resmlp_arch()], ids=["mlp", "masked", "convnet", "resmlp"])
@given(data=st.data())
def test_each_family_keeps_the_function(strategy: st.SearchStrategy[str], data: st.DataObject) -> None:
    check_invariance(data.draw(strategy), data.draw(st.integers(0, 2**16)))


@pytest.mark.parametrize("arch", ["mlp:6-32-32-3", "convnet:1x8x8-8-12-4", "resmlp:5-16-3,blocks=2,hidden=8"])
def test_larger_models_move_their_parameters(arch: str) -> None:
    check_invariance(arch, 0)


def test_apply_permutation_on_a_state_dict_matches_the_model_path() -> None:
    model = permsym.build("mlp:3-5-4-2")
    s = infer_structure(model, example_input(model))
    perms = random_permutation(s, torch.Generator().manual_seed(3))
    from_model = apply_permutation(model, s, perms).state_dict()
    from_state = apply_permutation(model.state_dict(), s, perms)
    assert all(torch.equal(from_model[k], from_state[k]) for k in from_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "input was mutated"
