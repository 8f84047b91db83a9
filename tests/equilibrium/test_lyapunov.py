"""Lyapunov prediction: closed form, equation residual, sampling factor, stability warning."""

import pytest
import torch

from permsym.data import load
from permsym.equilibrium import (
    NoEquilibriumWarning,
    linear_moments,
    predict_stationary_covariance,
    predict_stationary_covariance_linear,
    stationary_variance_closed_form,
)


def _spd(p, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(p, p, generator=g, dtype=torch.float64)
    return scale * (M @ M.T / p + 0.1 * torch.eye(p, dtype=torch.float64))


def test_commuting_case_equals_closed_form():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    lam = torch.linspace(0.2, 3.0, 6, dtype=torch.float64)
    c = torch.linspace(1.0, 2.0, 6, dtype=torch.float64)
    H, C = U @ torch.diag(lam) @ U.T, U @ torch.diag(c) @ U.T
    S = predict_stationary_covariance(H, C, lr=0.3, batch_size=5)
    closed = stationary_variance_closed_form(lam, c, lr=0.3, batch_size=5)
    assert torch.allclose((U.T @ S @ U).diagonal(), closed, rtol=1e-12)
    assert torch.allclose(U.T @ S @ U, torch.diag(closed), atol=1e-14)


def test_general_case_solves_the_equation_and_sampling_factor():
    H, C = _spd(5, 1), _spd(5, 2)
    lr, B = 0.2, 3
    S = predict_stationary_covariance(H, C, lr=lr, batch_size=B)
    A = torch.eye(5, dtype=torch.float64) - lr * H
    assert (S - A @ S @ A.T - lr**2 * C / B).abs().max() < 1e-14
    S_wo = predict_stationary_covariance(H, C, lr=lr, batch_size=B, sampling="without_replacement", n=10)
    assert torch.allclose(S_wo, S * (10 - 3) / (10 - 1), rtol=1e-12)
    with pytest.raises(ValueError, match=r"sampling='without_replacement' needs n >= batch_size"):
        predict_stationary_covariance(H, C, lr=lr, batch_size=B, sampling="without_replacement")


def test_unstable_lr_warns_with_eta_lambda_max():
    H = torch.diag(torch.tensor([1.0, 5.0], dtype=torch.float64))
    with pytest.warns(NoEquilibriumWarning, match=r"lr \* lambda_max must be < 2 .* got eta\*lambda_max = 2.5 .* Use lr < 0.4"):
        S = predict_stationary_covariance(H, H, lr=0.5, batch_size=1)
    assert torch.isnan(S).all()
    assert torch.isinf(stationary_variance_closed_form(torch.tensor([5.0]), torch.tensor([1.0]), lr=0.5, batch_size=1)).all()


def test_linear_exact_direct_iterate_and_frozen_limit():
    X, y = load("linear:n=300,d=3,noise=0.5", dtype=torch.float64)
    mom = linear_moments(X, y)
    direct = predict_stationary_covariance_linear(X, y, lr=0.1, batch_size=2, method="direct")
    fixed = predict_stationary_covariance_linear(X, y, lr=0.1, batch_size=2, method="iterate")
    # The fixed point stops on a 1e-13 step; its error is that over (1 - contraction) ~ 1/0.04.
    assert (direct - fixed).abs().max() < 1e-10 * direct.abs().max()
    frozen = predict_stationary_covariance(mom.H, mom.C, lr=0.1, batch_size=2)
    # Multiplicative noise adds variance: exact > frozen along every eigen-direction at small B.
    _, U = torch.linalg.eigh(mom.H)
    assert ((U.T @ direct @ U).diagonal() > 1.03 * (U.T @ frozen @ U).diagonal()).all()
    # ... and vanishes for large batches (the extra term is O(eta^2 / B)).
    big = predict_stationary_covariance_linear(X, y, lr=0.1, batch_size=10_000)
    frozen_big = predict_stationary_covariance(mom.H, mom.C, lr=0.1, batch_size=10_000)
    assert torch.allclose(big, frozen_big, rtol=2e-3)
    # H and C match their definitions: H = 2 E[x x^T], C = Cov of per-sample gradients at the optimum.
    r = mom.Xa @ mom.theta - y.reshape(-1)
    G = 2 * mom.Xa * r.unsqueeze(1)
    assert torch.allclose(mom.C, torch.cov(G.T, correction=0), atol=1e-12)
    with pytest.warns(NoEquilibriumWarning, match=r"eta\*lambda_max = "):
        predict_stationary_covariance_linear(X, y, lr=5.0, batch_size=2)


@pytest.mark.parametrize("lam", [-0.5, 0.0])
def test_non_positive_curvature_has_no_equilibrium(lam: float) -> None:
    """A flat or concave direction: a warning and NaN, never negative variances or a raw scipy error."""
    from permsym.equilibrium import NoEquilibriumWarning, predict_stationary_covariance

    H = torch.diag(torch.tensor([lam, 1.0], dtype=torch.float64))
    with pytest.warns(NoEquilibriumWarning, match=r"H must be positive definite .*lambda_min = "):
        sigma = predict_stationary_covariance(H, torch.eye(2, dtype=torch.float64), lr=0.1, batch_size=1)
    assert torch.isnan(sigma).all()
