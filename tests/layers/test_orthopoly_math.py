"""Orthonormal families, domain maps and initialisation against scipy (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from permsym.layers import OrthoPoly, poly_basis
from permsym.layers.poly_maps import MAPS

DEG = 16
NODES = 24  # Gauss rule with 24 nodes is exact for degree <= 47 >= 2 * DEG

# family, params, scipy Gauss rule for its weight (nodes, weights)
RULES = [
    ("legendre", {}, lambda n: special.roots_legendre(n)),
    ("chebyshev", {}, lambda n: special.roots_chebyt(n)),
    ("chebyshev1", {}, lambda n: special.roots_chebyt(n)),
    ("chebyshev2", {}, lambda n: special.roots_chebyu(n)),
    ("hermite", {}, lambda n: special.roots_hermitenorm(n)),
    ("laguerre", {}, lambda n: special.roots_genlaguerre(n, 0.0)),
    ("laguerre", {"alpha": 1.5}, lambda n: special.roots_genlaguerre(n, 1.5)),
    ("jacobi", {}, lambda n: special.roots_jacobi(n, 1.0, 1.0)),
    ("jacobi", {"alpha": 0.5, "beta": -0.3}, lambda n: special.roots_jacobi(n, 0.5, -0.3)),
    ("gegenbauer", {}, lambda n: special.roots_gegenbauer(n, 1.5)),
    ("gegenbauer", {"lambda": 0.75}, lambda n: special.roots_gegenbauer(n, 0.75)),
]


@pytest.mark.parametrize(("family", "params", "rule"), RULES)
def test_basis_is_orthonormal_under_gauss_quadrature(family, params, rule):
    nodes, weights = rule(NODES)
    weights = weights / weights.sum()  # the probability measure w / int w
    basis = poly_basis(family, torch.from_numpy(nodes), DEG, **params).numpy()
    gram = basis.T @ (weights[:, None] * basis)
    err = np.abs(gram - np.eye(DEG + 1)).max()
    assert err < 1e-10, f"{family} {params}: max |G - I| = {err:.2e}"


def test_poly_basis_shape_and_low_degrees():
    x = torch.linspace(-1, 1, 7, dtype=torch.float64).reshape(7, 1)
    basis = poly_basis("legendre", x, 3)
    assert basis.shape == (7, 1, 4)
    expected = math.sqrt(5) * (3 * x**2 - 1) / 2  # orthonormal P_2 for the uniform measure
    assert torch.allclose(basis[..., 2], expected, atol=1e-14)


# For x ~ N(0,1) the "gauss" map pushes N(0,1) onto the weight: s(x) = F_w^{-1}(Phi(x)),
# with F_w^{-1} from scipy's distributions (upper tail through isf/sf for precision).
QUANTILE = {
    "legendre": lambda x: stats.uniform(loc=-1, scale=2).ppf(stats.norm.cdf(x)),
    "chebyshev": lambda x: stats.arcsine(loc=-1, scale=2).ppf(stats.norm.cdf(x)),
    "laguerre": lambda x: stats.expon.isf(stats.norm.sf(x)),
    "hermite": lambda x: x,
}


@pytest.mark.parametrize("family", sorted(QUANTILE))
def test_gauss_map_is_the_exact_quantile_map(family):
    act = OrthoPoly(family, 2, domain="gauss", dtype=torch.float64)
    assert act.exact
    x = np.linspace(-8, 8, 321)
    t = act.map.value(torch.from_numpy(x)).numpy()
    err = np.abs(t - QUANTILE[family](x)).max()
    assert err < 1e-12, f"{family}: max |s(x) - F_w^-1(Phi(x))| = {err:.2e}"


@pytest.mark.parametrize("name", sorted(MAPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_maps_and_derivatives_are_finite_and_match_autograd(name, dtype):
    domain_map = MAPS[name]
    x = torch.tensor([-1e4, -40.0, -9.0, -2.5, -0.3, 0.0, 0.7, 3.0, 9.0, 40.0, 1e4], dtype=dtype)
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(domain_map.value(xr).sum(), xr)
    closed = torch.ones_like(x) if domain_map.derivative is None else domain_map.derivative(x)
    assert torch.isfinite(domain_map.value(x)).all() and torch.isfinite(closed).all()
    central = x.abs() < 5  # where the autograd formula itself is well conditioned
    assert torch.allclose(closed[central], auto[central], rtol=1e-5, atol=1e-6)
    # no clamp: strictly increasing (non-zero gradient) wherever inputs are typical
    assert (closed[x.abs() <= 3] > 0).all()


def _expect_normal(f, nodes: int = 400) -> float:
    x, w = special.roots_hermitenorm(nodes)
    return float(np.sum(w / math.sqrt(2 * math.pi) * f(x)))


FAMILY_DEFAULTS = ["legendre", "chebyshev", "chebyshev2", "hermite", "laguerre", "jacobi", "gegenbauer"]


@pytest.mark.parametrize("family", FAMILY_DEFAULTS + ["legendre:tanh", "laguerre:softplus"])
def test_variance_init_has_unit_second_moment(family):
    name, _, domain = family.partition(":")
    act = OrthoPoly(name, 8, domain=domain or None, dtype=torch.float64)

    def second_moment(x):
        with torch.no_grad():
            return act(torch.from_numpy(x)).numpy() ** 2

    # 400-node Gauss-Hermite, independent of the init's split Gauss-Legendre rule
    assert abs(_expect_normal(second_moment) - 1.0) < 1e-6


@pytest.mark.parametrize("target", ["gelu", "tanh", "relu"])
@pytest.mark.parametrize("family", ["legendre", "hermite", "chebyshev"])
def test_projection_init_matches_scipy_quad(family, target):
    act = OrthoPoly(family, 6, init=target, dtype=torch.float64)
    coeffs = act.coeffs.detach()
    fn = {"gelu": lambda x: x * stats.norm.cdf(x), "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0)}[target]
    for n in range(7):
        def integrand(x, n=n):
            t = act.map.value(torch.tensor([x], dtype=torch.float64))
            return fn(x) * float(poly_basis(family, t, 6)[0, n]) * stats.norm.pdf(x)

        expected, _ = integrate.quad(integrand, -12, 12, points=[0.0], limit=200)
        # both sides are quadratures accurate to ~1e-12; 1e-9 leaves room for quad's own error
        tol = 1e-9
        assert abs(float(coeffs[n]) - expected) < tol, (n, float(coeffs[n]), expected)
