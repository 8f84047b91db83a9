"""Curvature against dense float64 references: top-k, HVP variants, trace, SLQ quadrature."""

import pytest
import torch
import torch.nn.functional as F

import permsym
from permsym.curvature import (
    FlatLoss,
    HessianOperator,
    dense_hessian,
    hessian_top_eigenvalues,
    hessian_trace,
    lanczos_quadrature,
    spectral_density,
    top_eigenpairs,
    trace_estimate,
)


def _problem(arch="mlp:6-12-12-3,act=tanh", n=120, seed=0, task="classification"):
    g = torch.Generator().manual_seed(seed)
    model = permsym.build(arch, seed=seed).double()
    X = torch.randn(n, 6, generator=g, dtype=torch.float64)
    if task == "classification":
        return model, F.cross_entropy, (X, torch.randint(0, 3, (n,), generator=g))
    return model, F.mse_loss, (X, torch.randn(n, 1, generator=g, dtype=torch.float64))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_dense_hessian_matches_torch_func_hessian():
    model, loss_fn, data = _problem()
    flat = FlatLoss(model, loss_fn, data)
    H_ref = torch.func.hessian(flat.chunk_fn(*data))(flat.theta)
    H = dense_hessian(model, loss_fn, data, block=50, chunk_size=50)
    # float64 summation order only: 1e-12 relative to the largest entry.
    assert (H - H_ref).abs().max() <= 1e-12 * H_ref.abs().max()


@pytest.mark.parametrize("method", ["rop", "revrev", "linearize", "fwdrev"])
def test_hvp_variants_match_dense(method):
    model, loss_fn, data = _problem(task="regression", arch="mlp:6-12-1,act=tanh")
    H = dense_hessian(model, loss_fn, data)
    op = HessianOperator(FlatLoss(model, loss_fn, data, chunk_size=37), method=method)
    v = torch.randn(op.shape[0], generator=_gen(), dtype=torch.float64)
    assert (op(v) - H @ v).norm() <= 1e-12 * (H @ v).norm()
    assert op.num_matvecs == 1


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("solver", ["lanczos", "eigsh"])
def test_top_eigenvalues_match_eigvalsh(task, solver):
    arch = "mlp:6-12-12-3,act=tanh" if task == "classification" else "mlp:6-12-12-1,act=tanh"
    model, loss_fn, data = _problem(arch=arch, task=task)
    ref = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, data)).flip(0)[:5]
    res = hessian_top_eigenvalues(model, loss_fn, data, 5, tol=1e-10, solver=solver, chunk_size=50, generator=_gen())
    est = torch.tensor(res.eigenvalues, dtype=torch.float64)
    rel = ((est - ref).abs() / ref.abs()).max()
    assert rel < 1e-6, f"relative error {rel:.2e}"  # the budget; float64 reaches ~1e-12
    assert res.converged and res.num_params == sum(p.numel() for p in model.parameters())


def test_eigenvectors_satisfy_the_eigen_equation():
    model, loss_fn, data = _problem()
    H = dense_hessian(model, loss_fn, data)
    res = hessian_top_eigenvalues(model, loss_fn, data, 3, tol=1e-10, return_eigenvectors=True, generator=_gen())
    V, lam = res.eigenvectors, torch.tensor(res.eigenvalues, dtype=torch.float64)
    assert (H @ V - V * lam).norm(dim=0).max() <= 1e-8 * lam[0]
    assert torch.allclose(V.T @ V, torch.eye(3, dtype=torch.float64), atol=1e-10)


def test_two_consecutive_calls_agree_and_model_is_untouched():
    model, loss_fn, data = _problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = hessian_top_eigenvalues(model, loss_fn, data, 2, tol=1e-10, generator=_gen(3))
    b = hessian_top_eigenvalues(model, loss_fn, data, 2, tol=1e-10, generator=_gen(3))
    # PyHessian 0.1 returns 2H on the second call (stale gradient graph); we must not.
    assert a.eigenvalues == b.eigenvalues
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["hutchpp", "hutchinson"])
def test_trace_estimators_cover_the_exact_trace(method):
    model, loss_fn, data = _problem()
    exact = float(torch.trace(dense_hessian(model, loss_fn, data)))
    est = hessian_trace(model, loss_fn, data, method=method, num_matvecs=60, generator=_gen(1))
    assert est.stderr > 0
    assert abs(est.estimate - exact) < 3 * est.stderr, (est, exact)
    assert est.num_matvecs == 60


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum():
    g = _gen(2)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(1.0 / torch.arange(1, 201, dtype=torch.float64) ** 2) @ Q.T
    _, se_pp, _ = trace_estimate(A, num_matvecs=60, method="hutchpp", generator=g)
    _, se_h, _ = trace_estimate(A, num_matvecs=60, method="hutchinson", generator=g)
    assert se_pp < 0.2 * se_h


def test_solvers_accept_matrix_or_matvec():
    A = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
    v1, *_ = top_eigenpairs(A, 2, tol=1e-12, generator=_gen())
    v2, *_ = top_eigenpairs(lambda v: A @ v, 2, size=50, tol=1e-12, generator=_gen())
    assert torch.allclose(v1, torch.tensor([50.0, 49.0], dtype=torch.float64), rtol=1e-10)
    assert torch.equal(v1, v2)
    with pytest.raises(ValueError, match=r"as_matvec: a matvec callable needs size=P"):
        top_eigenpairs(lambda v: v, 1)
    with pytest.raises(ValueError, match=r"top_eigenpairs: k must be in \[1, 50\]; got 0"):
        top_eigenpairs(A, 0)


def test_lanczos_quadrature_is_exact_for_low_degree_moments():
    g = _gen(4)
    M = torch.randn(60, 60, generator=g, dtype=torch.float64)
    A = (M + M.T) / 10
    v = torch.randn(60, generator=g, dtype=torch.float64)
    nodes, weights = lanczos_quadrature(A, v, num_steps=8)
    u = v / v.norm()
    for p in range(2 * 8):  # Gauss quadrature with m nodes is exact up to degree 2m - 1
        exact = u @ torch.linalg.matrix_power(A, p) @ u
        assert torch.isclose((weights * nodes**p).sum(), exact, rtol=1e-8, atol=1e-10), p


def test_spectral_density_integrates_to_one_and_sees_the_top_eigenvalue():
    model, loss_fn, data = _problem()
    H = dense_hessian(model, loss_fn, data)
    lam = torch.linalg.eigvalsh(H)
    dens = spectral_density(model, loss_fn, data, num_probes=2, num_steps=40, generator=_gen())
    dx = float(dens.grid[1] - dens.grid[0])
    assert abs(float(dens.values.sum()) * dx - 1.0) < 1e-3
    assert abs(float(dens.weights.sum()) - 1.0) < 1e-12
    assert abs(float(dens.nodes.max()) - float(lam[-1])) < 1e-6 * float(lam[-1])
    payload = dens.to_json()
    assert len(payload["grid"]) == len(payload["values"]) == 400
