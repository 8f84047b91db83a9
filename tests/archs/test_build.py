import pytest
import torch
from torch import nn

import permsym
from permsym._errors import PermsymError
from permsym.layers import MaskedLinear


@pytest.mark.parametrize(
    ("arch", "n_in", "n_out"),
    [
        ("mlp:5-7-3", 5, 3),
        ("mlp:5-7-7-7-3,act=gelu,bias=false", 5, 3),
        ("mlp:6-8-4-2,density=0.5,mask_seed=3", 6, 2),
        ("convnet:1x8x8-4-6-10", 64, 10),
        ("convnet:2x5x5-3-4,pool=avg,act=tanh", 50, 4),
        ("resmlp:6-8-2,blocks=3,hidden=5,act=silu", 6, 2),
    ],
)
def test_build_families_give_the_declared_shapes(arch: str, n_in: int, n_out: int) -> None:
    model = permsym.build(arch)
    model.eval()
    assert model(torch.randn(3, n_in)).shape == (3, n_out)
    assert model.permsym_arch == arch


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = permsym.build("mlp:4-6-2", seed=5)
    b = permsym.build("mlp:4-6-2", seed=5)
    c = permsym.build("mlp:4-6-2", seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_bias_false_and_activation_types() -> None:
    model = permsym.build("mlp:3-4-2,act=tanh,bias=false")
    assert model.fc1.bias is None and isinstance(model.act1, nn.Tanh)


def test_masked_mlp_uses_masked_linear_everywhere() -> None:
    model = permsym.build("mlp:6-8-5-2,density=0.4,mask_seed=1")
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert layers and all(isinstance(m, MaskedLinear) for m in layers)
    assert torch.equal(model.fc1.weight * (1 - model.fc1.mask), torch.zeros_like(model.fc1.weight))


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("mpl:3-4", r"unknown architecture 'mpl' in 'mpl:3-4'; expected one of .*mlp"),
        ("mlp", r"has no dimensions; expected mlp:IN-...-OUT"),
        ("mlp:3-x-4", r"bad dimension 'x' in 'mlp:3-x-4'"),
        ("mlp:3-0-4", r"bad dimension '0'"),
        ("mlp:3", r"needs at least an input and an output size"),
        ("mlp:3-4,act=relux", r"bad value 'relux' for act .*expected act=relu\|tanh"),
        ("mlp:3-4,bias=maybe", r"bad value 'maybe' for bias .*true\|false"),
        ("mlp:3-4,density=1.5", r"bad value '1.5' for density .*\(0, 1\]"),
        ("mlp:3-4,depth=2", r"unknown option 'depth=2' in 'mlp:3-4,depth=2'; mlp accepts act="),
        ("convnet:8-4-10", r"convnet needs an input shape CxHxW"),
        ("resmlp:4-8-8-2", r"resmlp takes exactly IN-WIDTH-OUT"),
        ("mlp:1x2-3", r"mlp takes plain sizes"),
    ],
)
def test_bad_arch_strings_name_the_bad_token(arch: str, message: str) -> None:
    with pytest.raises(PermsymError, match=message):
        permsym.build(arch)


def test_non_string_arch_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="arch must be a string"):
        permsym.build(784)  # type: ignore[arg-type]


def test_masks_and_weights_are_drawn_from_independent_streams() -> None:
    """Equal seeds for masks and weights once made every kept weight negative."""
    model = permsym.build("mlp:64-64-10,density=0.5,mask_seed=0", seed=0)
    kept = model.fc1.weight[model.fc1.mask.bool()]
    positive = float((kept > 0).float().mean())
    assert 0.4 < positive < 0.6, positive
