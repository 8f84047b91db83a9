"""The written-out R-operator (hvp="rop") against the dense float64 Hessian, and its fallbacks."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import permsym
from permsym.curvature import FlatLoss, HessianOperator, dense_hessian
from permsym.noise.outer import applies
from tests.assertions import relative_error

ACTS = ["tanh", "relu", "gelu", "silu", "sigmoid", "identity"]


def _data(n, d_in, d_out, loss, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    if loss == "ce":
        return F.cross_entropy, (X, torch.randint(0, d_out, (n,), generator=g))
    return F.mse_loss, (X, torch.randn(n, d_out, generator=g, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(3, 7), min_size=1, max_size=3),  # masks need distinct rows
    act=st.sampled_from(ACTS),
    loss=st.sampled_from(["ce", "mse"]),
    bias=st.booleans(),
    density=st.sampled_from([1.0, 0.5]),
    chunk=st.sampled_from([None, 7]),
    seed=st.integers(0, 2**16),
)
def test_rop_equals_the_dense_hessian(widths, act, loss, bias, density, chunk, seed):
    """Random MLPs (masked or not, with or without bias, both losses, chunked data): H v exact."""
    d_in, d_out = 4, 3
    arch = f"mlp:{d_in}-" + "-".join(map(str, widths)) + f"-{d_out},act={act},bias={str(bias).lower()}"
    if density < 1:
        arch += f",density={density}"
    model = permsym.build(arch, seed=seed % 1000).double()
    loss_fn, data = _data(19, d_in, d_out, loss, seed)
    H = dense_hessian(model, loss_fn, data)
    op = HessianOperator(FlatLoss(model, loss_fn, data, chunk_size=chunk))
    assert op.method == "rop"
    V = torch.randn(H.shape[0], 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for j in range(2):
        # float64: rounding only, relative to |Hv|
        assert relative_error(op(V[:, j]), H @ V[:, j]) < 1e-10, arch


def test_reused_buffers_do_not_leak_between_products():
    model = permsym.build("mlp:5-8-8-3,act=tanh", seed=1).double()
    loss_fn, data = _data(30, 5, 3, "ce", 0)
    op = HessianOperator(FlatLoss(model, loss_fn, data), method="rop")
    v1, v2 = torch.randn(2, op.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    first = op(v1)
    op(v2)
    assert torch.equal(op(v1), first)


def test_float32_products_agree_with_revrev():
    model = permsym.build("mlp:16-32-32-4,act=gelu", seed=0)
    loss_fn, (X, y) = _data(64, 16, 4, "ce", 0)
    data = (X.float(), y)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    a = HessianOperator(FlatLoss(model, loss_fn, data), method="rop")(v)
    b = HessianOperator(FlatLoss(model, loss_fn, data), method="revrev")(v)
    assert relative_error(a, b) < 1e-5  # float32 rounding of two different operation orders


class _Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = permsym.build("mlp:4-5-3,act=tanh", seed=0).double()

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize(
    ("model", "loss", "reason"),
    [
        (_Wrapped(), "ce", "not an nn.Sequential"),
        (nn.Sequential(nn.Linear(4, 5), nn.GELU(approximate="tanh"), nn.Linear(5, 3)).double(), "ce", "approximate='tanh'"),
        (nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double(), "ce", "LayerNorm"),
        (permsym.build("mlp:4-5-3,act=tanh").double(), "soft", "not mean cross-entropy"),
        (permsym.build("mlp:4-5-1,act=tanh").double(), "mse1", "targets must have the output's shape"),
        (nn.Sequential(nn.Linear(4, 5), nn.SiLU(inplace=True), nn.Linear(5, 3)).double(), "ce", "in-place activation"),
        (permsym.build("mlp:4-5-3,act=tanh").double(), "ignored", r"class labels must lie in \[0, 3\); got \[-100, 2\]"),
        (permsym.build("mlp:4-5-3,act=tanh").double(), "uint8", "not mean cross-entropy"),
        (permsym.build("mlp:4-5-3,act=tanh").double(), "own_mse", "not mean cross-entropy"),
    ],
)
def test_unsupported_models_fall_back_to_revrev(model, loss, reason):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(10, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (10,), generator=g)

    def _mse(output, target):  # a user's loss that happens to share the name of permsym's
        return ((output - target) ** 2).sum()

    loss_fn, y = {
        "ce": (F.cross_entropy, labels),
        "soft": (F.cross_entropy, torch.softmax(torch.randn(10, 3, generator=g, dtype=torch.float64), 1)),
        "mse1": (F.mse_loss, torch.randn(10, generator=g, dtype=torch.float64)),
        "ignored": (F.cross_entropy, torch.cat([labels[:9], torch.tensor([-100])])),  # F.cross_entropy's ignore_index
        "uint8": (F.cross_entropy, labels.to(torch.uint8)),
        "own_mse": (_mse, torch.randn(10, 3, generator=g, dtype=torch.float64)),
    }[loss]
    flat = FlatLoss(model, loss_fn, (X, y))
    op = HessianOperator(flat)
    assert op.method == "revrev"
    assert not applies(flat)  # the per-sample outer-product path shares the check
    with pytest.raises(ValueError, match=reason):
        HessianOperator(flat, method="rop")
    # mse1 broadcasts (10, 1) against (10,), a user error revrev follows as written; uint8
    # targets are refused by F.cross_entropy's own gather in torch 2.13, as without permsym
    if loss not in ("mse1", "uint8"):
        v = torch.randn(op.shape[0], generator=g, dtype=torch.float64)
        assert relative_error(op(v), dense_hessian(model, loss_fn, (X, y)) @ v) < 1e-10
