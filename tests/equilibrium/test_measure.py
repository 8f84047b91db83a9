"""Real SGD on linear least squares against the exact prediction (statistical, fixed seeds)."""

import pytest
import torch

import permsym
from permsym.data import load
from permsym.equilibrium import (
    autocorrelation_time,
    fit_two_phase,
    linear_moments,
    measure_stationary_covariance,
    predict_stationary_covariance,
    predict_stationary_covariance_linear,
    relaxation_run,
)

SPEC = "linear:n=512,d=3,noise=0.5,seed=0"


@pytest.fixture(scope="module")
def problem():
    X, y = load(SPEC, dtype=torch.float64)
    return X, y, linear_moments(X, y), permsym.build("mlp:3-1").double()


@pytest.mark.slow
def test_measured_variance_inside_95pct_interval_of_exact_prediction(problem):
    X, y, mom, model = problem
    lam, U = torch.linalg.eigh(mom.H)
    lr, B = 0.2, 2
    exact = (U.T @ predict_stationary_covariance_linear(X, y, lr=lr, batch_size=B) @ U).diagonal()
    frozen = (U.T @ predict_stationary_covariance(mom.H, mom.C, lr=lr, batch_size=B) @ U).diagonal()
    m = measure_stationary_covariance(model, (X, y), lr=lr, batch_size=B, steps=40_000, burn_in=500, subspace=U,
                                      reference=mom.theta, min_loss=mom.min_loss,
                                      generator=torch.Generator().manual_seed(1))
    # 95% intervals from the effective sample size; seed fixed, 4 directions.
    for i in range(4):
        assert m.ci_low[i] <= float(exact[i]) <= m.ci_high[i], (i, m.variances[i], float(exact[i]), m.ci_low[i], m.ci_high[i])
    # The frozen-noise prediction is too small by more than the measurement's resolution somewhere.
    assert any(float(frozen[i]) < m.ci_low[i] for i in range(4))
    excess = float(torch.trace(mom.H @ predict_stationary_covariance_linear(X, y, lr=lr, batch_size=B))) / 2
    assert m.excess_loss_ci[0] <= excess <= m.excess_loss_ci[1]


@pytest.mark.slow
def test_excess_loss_grows_linearly_in_lr_over_batch(problem):
    X, y, mom, model = problem
    B = 8
    xs, ys = [], []
    for k, lr in enumerate((0.025, 0.05, 0.1)):
        m = measure_stationary_covariance(model, (X, y), lr=lr, batch_size=B, steps=15_000, burn_in=1000,
                                          subspace=torch.eye(4, dtype=torch.float64), reference=mom.theta,
                                          min_loss=mom.min_loss, generator=torch.Generator().manual_seed(10 + k))
        xs.append(lr / B)
        ys.append(m.excess_loss)
    x, yv = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    slope = float((x @ yv) / (x @ x))  # least squares through the origin
    predicted = float(torch.trace(mom.C)) / 4  # E[J - J*] ~ eta tr(C) / (4 B)
    assert abs(slope / predicted - 1) < 0.15, (slope, predicted)


def test_autocorrelation_time_of_ar1():
    g = torch.Generator().manual_seed(0)
    a, n = 0.8, 100_000
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.empty(n, dtype=torch.float64)
    x[0] = 0
    for t in range(1, n):
        x[t] = a * x[t - 1] + eps[t]
    # tau = (1 + a) / (1 - a) = 9 for AR(1); 10% covers the estimator's noise at this length.
    assert abs(autocorrelation_time(x) / 9.0 - 1) < 0.1


def test_relaxation_fit_recovers_rates_and_runs_on_sgd(problem):
    t = torch.arange(1, 600, dtype=torch.float64)
    fit = fit_two_phase(t, 3 * torch.exp(-0.1 * t) + 0.5 * torch.exp(-0.005 * t) + 0.02)
    assert fit.fast_rate == pytest.approx(0.1, rel=1e-4) and fit.slow_rate == pytest.approx(0.005, rel=1e-4)
    X, y, mom, model = problem
    start = permsym.build("mlp:3-1").double()
    torch.nn.utils.vector_to_parameters(mom.theta.clone(), start.parameters())
    lam, U = torch.linalg.eigh(mom.H)
    direction = 2.0 * (U[:, 0] + U[:, -1])
    lr = 0.05
    tt, curve, fit = relaxation_run(start, (X, y), lr=lr, batch_size=64, steps=1500, direction=direction,
                                    generator=torch.Generator().manual_seed(0))
    assert curve[0] > 10 * curve[-100:].mean()
    # Mean excess loss decays like exp(-2 eta lambda t) per direction: the fast phase is the stiff
    # direction, the slow one the flat direction (30%: SGD noise on a single run).
    assert fit.fast_rate == pytest.approx(2 * lr * float(lam[-1]), rel=0.3)
    assert fit.slow_rate == pytest.approx(2 * lr * float(lam[0]), rel=0.3)


def test_measure_rejects_bad_subspace(problem):
    X, y, _, model = problem
    with pytest.raises(ValueError, match=r"measure_stationary_covariance: subspace must be a \(P, k\) matrix with P = 4"):
        measure_stationary_covariance(model, (X, y), lr=0.1, batch_size=2, steps=10, subspace=torch.zeros(3, 1))


def test_frozen_parameters_do_not_move() -> None:
    """requires_grad=False is the user's choice: SGD must leave those coordinates alone."""
    from permsym.curvature.functional import FlatLoss
    from permsym.equilibrium import run_sgd

    X, y = load(SPEC, dtype=torch.float64)
    model = permsym.build("mlp:3-4-1", seed=0).double()
    model.fc1.weight.requires_grad_(False)
    flat = FlatLoss(model, torch.nn.functional.mse_loss, (X, y))
    end = run_sgd(flat, flat.theta, lr=0.05, batch_size=4, steps=50, generator=torch.Generator().manual_seed(0))
    n = model.fc1.weight.numel()
    assert torch.equal(end[:n], flat.theta[:n])
    assert not torch.equal(end[n:], flat.theta[n:])
