"""Per-sample gradients against a Python loop (float64) and the noise statistics built on them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import permsym
from permsym.curvature import FlatLoss
from permsym.noise import gradient_covariance, gradient_noise, per_sample_gradients
from permsym.noise.outer import applies


class _NotSequential(nn.Module):
    """The same function as its MLP, hidden from the outer-product path (vmap path)."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return self.mlp(x)


def _problem(task):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(23, 5, generator=g, dtype=torch.float64)
    if task == "classification":
        return permsym.build("mlp:5-7-4,act=tanh").double(), F.cross_entropy, (X, torch.randint(0, 4, (23,), generator=g))
    return permsym.build("mlp:5-7-2,act=tanh").double(), F.mse_loss, (X, torch.randn(23, 2, generator=g, dtype=torch.float64))


def _loop(model, loss_fn, X, y):
    rows = []
    for i in range(X.shape[0]):
        model.zero_grad()
        loss_fn(model(X[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows)


@pytest.mark.parametrize("path", ["outer", "vmap"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_per_sample_gradients_match_a_loop(task, path):
    model, loss_fn, (X, y) = _problem(task)
    if path == "vmap":
        model = _NotSequential(model)
    assert applies(FlatLoss(model, loss_fn, (X, y))) == (path == "outer")
    G = per_sample_gradients(model, loss_fn, (X, y), chunk_size=5)
    ref = _loop(model, loss_fn, X, y)
    assert (G - ref).abs().max() < 1e-10


@pytest.mark.parametrize("arch", ["mlp:5-7-6-4,act=gelu,density=0.5", "mlp:5-7-4,act=relu,bias=false",
                                  "mlp:5-6-4,act=silu", "mlp:5-6-4,act=sigmoid"])
def test_outer_product_path_on_masked_and_biasless_mlps(arch):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(17, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (17,), generator=g)
    model = permsym.build(arch, seed=2).double()
    G = per_sample_gradients(model, F.cross_entropy, (X, y))
    assert (G - _loop(model, F.cross_entropy, X, y)).abs().max() < 1e-10
    C = torch.cov(G.T, correction=0)
    fast = gradient_noise(model, F.cross_entropy, (X, y), batch_size=2, lr=0.1)
    slow = gradient_noise(_NotSequential(model), F.cross_entropy, (X, y), batch_size=2, lr=0.1)
    for res in (fast, slow):
        assert abs(res.trace_C - float(C.trace())) < 1e-10 * float(C.trace())
        assert abs(res.grad_norm_sq - float(G.mean(0) @ G.mean(0))) < 1e-12


def test_gradient_noise_statistics():
    model, loss_fn, (X, y) = _problem("classification")
    G = _loop(model, loss_fn, X, y)
    C = torch.cov(G.T, correction=0)
    gbar = G.mean(0)
    res = gradient_noise(model, loss_fn, (X, y), batch_size=4, lr=0.3, dense=True, chunk_size=6)
    P = G.shape[1]
    assert res.num_params == P and res.num_samples == 23
    assert abs(res.trace_C - float(C.trace())) < 1e-10 * float(C.trace())
    assert abs(res.grad_norm_sq - float(gbar @ gbar)) < 1e-12
    assert res.noise_scale == pytest.approx(res.trace_C / res.grad_norm_sq, rel=1e-12)
    assert res.temperature == pytest.approx(0.3 * res.trace_C / (2 * 4 * P), rel=1e-12)
    assert (res.covariance - C).abs().max() < 1e-12
    assert set(res.to_json()) >= {"trace_C", "grad_norm_sq", "noise_scale", "temperature"}


def test_projected_covariance_equals_vt_c_v():
    model, loss_fn, (X, y) = _problem("regression")
    C = gradient_covariance(model, loss_fn, (X, y))
    V = torch.linalg.qr(torch.randn(C.shape[0], 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    CV = gradient_covariance(model, loss_fn, (X, y), subspace=V, chunk_size=4)
    assert (CV - V.T @ C @ V).abs().max() < 1e-12


def test_bad_inputs():
    model, loss_fn, data = _problem("regression")
    with pytest.raises(ValueError, match=r"gradient_noise: subspace must be a \(P, k\) matrix of directions with P = 58; got shape \(3, 2\)"):
        gradient_noise(model, loss_fn, data, batch_size=2, lr=0.1, subspace=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"gradient_noise: batch_size must be a positive integer; got 0"):
        gradient_noise(model, loss_fn, data, batch_size=0, lr=0.1)
    with pytest.raises(ValueError, match=r"gradient_noise: lr must be > 0; got -1"):
        gradient_noise(model, loss_fn, data, batch_size=2, lr=-1)


@pytest.mark.parametrize("path", ["outer", "vmap"])
def test_trace_survives_a_gradient_mean_far_above_its_noise(path):
    """|gbar|^2 / tr C ~ 1e7: the one-pass mean|g|^2 - |gbar|^2 gave 0 in float32 here."""
    gen = torch.Generator().manual_seed(0)
    X = 1.0 + 0.01 * torch.randn(256, 3, generator=gen, dtype=torch.float64)
    y = 100.0 + 1e-3 * torch.randn(256, 1, generator=gen, dtype=torch.float64)
    wrap = _NotSequential if path == "vmap" else (lambda m: m)
    exact = gradient_noise(wrap(permsym.build("mlp:3-1", seed=0).double()), F.mse_loss, (X, y), batch_size=1, lr=0.1).trace_C
    approx = gradient_noise(wrap(permsym.build("mlp:3-1", seed=0)), F.mse_loss, (X.float(), y.float()), batch_size=1, lr=0.1).trace_C
    assert exact > 0
    # float32 gradients: relative accuracy ~1e-3 of the noise is what float32 can give here
    assert abs(approx - exact) / exact < 1e-2, (approx, exact)


@pytest.mark.parametrize("path", ["outer", "vmap"])
def test_per_sample_gradients_into_a_given_tensor(path):
    model, loss_fn, (X, y) = _problem("classification")
    model = _NotSequential(model) if path == "vmap" else model
    out = torch.full((23, sum(p.numel() for p in model.parameters())), float("nan"), dtype=torch.float64)
    G = per_sample_gradients(model, loss_fn, (X, y), out=out)
    assert G is out and (G - _loop(model, loss_fn, X, y)).abs().max() < 1e-10
    with pytest.raises(ValueError, match=r"out must be a contiguous \(23, \d+\) torch.float64 tensor on cpu; got a \(2, 3\) torch.float32"):
        per_sample_gradients(model, loss_fn, (X, y), out=torch.zeros(2, 3))
