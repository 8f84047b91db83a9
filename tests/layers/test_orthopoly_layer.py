"""OrthoPoly as a layer: fused gradients, per-unit coefficients, arch strings, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import permsym
from permsym.layers import OrthoPoly, poly_basis
from permsym.layers.orthopoly import _apply

FAMILIES = [
    ("legendre", {}),
    ("chebyshev", {}),
    ("chebyshev2", {}),
    ("hermite", {}),
    ("laguerre", {}),
    ("laguerre", {"alpha": 0.7, "domain": "softplus"}),
    ("jacobi", {"alpha": 0.5, "beta": -0.3}),
    ("gegenbauer", {}),
    ("legendre", {"domain": "tanh"}),
]


def _naive(act: OrthoPoly, x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Stacked basis + plain autograd: the slow trusted path."""
    basis = poly_basis(act.family.name, act.map.value(x), act.degree, **act.family_params)
    if act.num_units is None:
        return basis @ coeffs
    shape = (1, act.num_units) + (1,) * (x.dim() - 2) + (act.degree + 1,)
    return (basis * coeffs.reshape(shape)).sum(-1)


def _perturbed(family, kw, degree, units):
    act = OrthoPoly(family, degree, num_units=units, dtype=torch.float64, **kw)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        act.coeffs.add_(0.3 * torch.randn(act.coeffs.shape, generator=gen, dtype=torch.float64))
    return act


@pytest.mark.parametrize(("family", "kw"), FAMILIES)
@pytest.mark.parametrize(("units", "shape"), [(None, (5, 3)), (3, (4, 3)), (3, (2, 3, 2, 2))])
def test_fused_gradients_match_gradcheck_and_naive_autograd(family, kw, units, shape):
    act = _perturbed(family, kw, 5, units)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    coeffs = act.coeffs.detach().clone().requires_grad_(True)

    def fused(x, a):
        return _apply(x, a, act.inv_lam, act.dmat, act._rec)

    assert torch.autograd.gradcheck(fused, (x, coeffs))
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    y, y_ref = fused(x, coeffs), _naive(act, x, coeffs)
    # float64 recurrences of degree 5: rounding ~1e-15 relative; 1e-12 budget
    assert torch.allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(y, (x, coeffs), g)
    ref = torch.autograd.grad(y_ref, (x, coeffs), g)
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-11), float((a - b).abs().max())


@pytest.mark.parametrize("degree", [0, 1, 2, 16])
def test_low_and_high_degrees_match_naive(degree):
    act = _perturbed("chebyshev", {}, degree, 4)
    x = torch.linspace(-4, 4, 24, dtype=torch.float64).reshape(6, 4).requires_grad_(True)
    y, y_ref = act(x), _naive(act, x, act.coeffs)
    assert torch.allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    gx, ga = torch.autograd.grad(y.sum(), (x, act.coeffs))
    rx, ra = torch.autograd.grad(y_ref.sum(), (x, act.coeffs), allow_unused=True)
    rx = torch.zeros_like(x) if rx is None else rx  # degree 0: f does not depend on x
    assert torch.allclose(gx, rx, rtol=1e-10, atol=1e-10) and torch.allclose(ga, ra, rtol=1e-10, atol=1e-10)


def test_saved_memory_does_not_grow_with_degree():
    saved = {}
    for degree in (4, 8, 16):
        act = OrthoPoly("legendre", degree, num_units=32)
        x = torch.randn(64, 32, requires_grad=True)
        numel: list[int] = []

        def pack(t: torch.Tensor, numel: list[int] = numel) -> torch.Tensor:
            numel.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            act(x)
        saved[degree] = sum(numel) - act.coeffs.numel() - act.inv_lam.numel() - act.dmat.numel()
    assert saved == {4: x.numel(), 8: x.numel(), 16: x.numel()}


@pytest.mark.parametrize("family", ["legendre", "chebyshev", "chebyshev2", "hermite", "jacobi", "gegenbauer"])
def test_twenty_layer_mlp_keeps_activation_scale(family):
    # laguerre is left out: its one-sided unbounded map grows like x**(2 degree) and the
    # depth-20 stack diverges on tail samples although E[f^2] = 1 (see docs/layers.md)
    gen = torch.Generator().manual_seed(0)
    width = 128
    h = torch.randn(512, width, generator=gen, dtype=torch.float64)
    act = OrthoPoly(family, 8, dtype=torch.float64)
    stds = []
    with torch.no_grad():
        for _ in range(20):
            # LeCun-normal weights: Var[z] = E[f^2] = 1 layer after layer
            w = torch.randn(width, width, generator=gen, dtype=torch.float64) / width**0.5
            h = act(h @ w.T)
            stds.append(float(h.std()))
    assert all(0.5 <= s <= 2.0 for s in stds), (family, stds)


def test_per_unit_coefficients_act_on_dim_one():
    act = _perturbed("hermite", {}, 4, 3)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y = act(x)
    for c in range(3):
        single = OrthoPoly("hermite", 4, dtype=torch.float64)
        with torch.no_grad():
            single.coeffs.copy_(act.coeffs[c])
        assert torch.allclose(y[:, c], single(x[:, c]), atol=1e-12)
    assert act.permsym_unit_params == {"coeffs": 0}
    assert OrthoPoly("hermite", 4).permsym_unit_params == {}
    assert OrthoPoly.permsym_elementwise is True


def test_permsym_odd_needs_odd_map_symmetric_family_and_odd_coefficients():
    act = OrthoPoly("legendre", 5, dtype=torch.float64)
    assert not act.permsym_odd  # variance init has even terms
    with torch.no_grad():
        act.coeffs[0::2] = 0
    assert act.permsym_odd
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert torch.allclose(act(-x), -act(x), atol=1e-14)
    lag = OrthoPoly("laguerre", 5)
    with torch.no_grad():
        lag.coeffs[0::2] = 0
    assert not lag.permsym_odd


def test_compiled_layer_matches_eager():
    eager = _perturbed("chebyshev", {}, 8, 6)
    compiled = OrthoPoly("chebyshev", 8, num_units=6, compile=True, dtype=torch.float64)
    with torch.no_grad():
        compiled.coeffs.copy_(eager.coeffs)
    x = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    y1, y2 = eager(x), compiled(x)
    g1 = torch.autograd.grad(y1.sum(), (x, eager.coeffs))
    g2 = torch.autograd.grad(y2.sum(), (x, compiled.coeffs))
    assert torch.allclose(y1, y2, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-11) for a, b in zip(g1, g2, strict=True))


@pytest.mark.parametrize(
    ("arch", "shape", "coeff_shape"),
    [
        ("mlp:4-16-2,act=legendre8", (3, 4), (9,)),
        ("mlp:4-16-2,act=hermite6:per_unit", (3, 4), (16, 7)),
        ("mlp:4-16-2,act=chebyshev1", (3, 4), (2,)),
        ("convnet:1x8x8-8-10,act=chebyshev4", (3, 64), (5,)),
        ("convnet:1x8x8-8-10,act=chebyshev4:per_unit", (3, 64), (8, 5)),
        ("resmlp:6-12-3,act=gegenbauer3:per_unit", (3, 6), (12, 4)),
        ("mlp:4-8-2,act=laguerre5,density=0.5", (3, 4), (6,)),
    ],
)
def test_arch_strings_build_orthopoly(arch, shape, coeff_shape):
    model = permsym.build(arch)
    acts = [m for m in model.modules() if isinstance(m, OrthoPoly)]
    assert acts and all(tuple(a.coeffs.shape) == coeff_shape for a in acts)
    y = model(torch.randn(shape))
    y.sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(a.coeffs.grad).all() for a in acts)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: OrthoPoly("legendary", 3), ValueError, r"^OrthoPoly\('legendary', 3\): family must be one of legendre, .*; got 'legendary'\.$"),
        (lambda: OrthoPoly("legendre", -1), ValueError, r"^OrthoPoly\('legendre', -1\): degree must be in \[0, 64\]; got -1\.$"),
        (lambda: OrthoPoly("legendre", 65), ValueError, r"degree must be in \[0, 64\]; got 65\.$"),
        (lambda: OrthoPoly("legendre", 2.0), TypeError, r"degree must be an int; got float\.$"),
        (lambda: OrthoPoly("legendre", 3, num_units=0), ValueError, r"num_units must be a positive integer or None; got 0\.$"),
        (lambda: OrthoPoly("legendre", 3, init="xavier"), ValueError, r"init must be one of variance, gelu, tanh, relu; got 'xavier'\.$"),
        (lambda: OrthoPoly("chebyshev2", 3, domain="gauss"), ValueError, r"domain must be one of tanh; got 'gauss'\.$"),
        (lambda: OrthoPoly("laguerre", 3, alpha=1.0, domain="gauss"), ValueError, r"domain 'gauss' needs laguerre alpha = 0"),
        (lambda: OrthoPoly("jacobi", 3, alpha=-1.0), ValueError, r"alpha must be > -1; got -1\.0\.$"),
        (lambda: OrthoPoly("jacobi", 3, gamma=1.0), TypeError, r"family parameters of jacobi must be among alpha, beta; got 'gamma'\.$"),
        (lambda: OrthoPoly("legendre", 3, num_units=4)(torch.zeros(2, 5)), ValueError, r"input must have 4 units on dim 1; got shape \(2, 5\)\.$"),
        (lambda: poly_basis("bessel", torch.zeros(2), 3), ValueError, r"^poly_basis\('bessel', degree=3\): family must be one of"),
        (lambda: permsym.build("mlp:4-8-2,act=legendre99x"), permsym.PermsymError, r"bad value 'legendre99x' for act"),
    ],
)
def test_bad_input_messages(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_orthopoly_works_in_sequential_float64():
    net = nn.Sequential(nn.Linear(3, 5), OrthoPoly("hermite", 6, num_units=5), nn.Linear(5, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    assert net(x).dtype == torch.float64
