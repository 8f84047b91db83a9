"""OrthoPoly's fused passes: eager panels, compiled kernels, torch.func, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call, grad, vmap

from permsym.layers import OrthoPoly, poly_basis, poly_native
from permsym.layers.poly_autograd import eager_backward, eager_forward
from tests.assertions import assert_close_rel


def _reference(act: OrthoPoly, x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Stacked basis + plain autograd: the slow trusted path."""
    basis = poly_basis(act.family.name, act.map.value(x), act.degree, **act.family_params)
    if act.num_units is None:
        return basis @ coeffs
    shape = (1, act.num_units) + (1,) * (x.dim() - 2) + (act.degree + 1,)
    return (basis * coeffs.reshape(shape)).sum(-1)


@given(
    family=st.sampled_from(["chebyshev", "legendre", "hermite", "laguerre", "jacobi"]),
    degree=st.integers(0, 7),
    per_unit=st.booleans(),
    shape=st.sampled_from([(7, 3), (5, 4, 3), (2, 3, 4, 5), (1, 9, 7), (13,)]),
    panel=st.sampled_from([1, 5, 12, 30, 1 << 15]),
    seed=st.integers(0, 2**16),
)
def test_eager_panels_match_the_stacked_basis(family, degree, per_unit, shape, panel, seed):
    # panel sizes from 1 element to more than the input cover every plan: flat slices with a
    # short last panel (shared), row panels (per unit) and panels of units within one row
    if per_unit and len(shape) < 2:
        shape = (*shape, 2)
    gen = torch.Generator().manual_seed(seed)
    units = shape[1] if per_unit else None
    act = OrthoPoly(family, degree, num_units=units, dtype=torch.float64)
    coeffs = (act.coeffs + 0.3 * torch.randn(act.coeffs.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    a, e = coeffs.detach() * act.inv_lam, (coeffs.detach() @ act.dmat) * act.inv_lam
    y = eager_forward(x.detach(), a, act._rec, panel=panel)
    grad_x, grad_a = eager_backward(x.detach(), g, a, e, act._rec, True, True, panel=panel)
    y_ref = _reference(act, x, coeffs)
    ref_x, ref_a = torch.autograd.grad(y_ref, (x, coeffs), g, allow_unused=True, materialize_grads=True)
    # float64 recurrences of degree <= 7: rounding ~1e-15 relative; 1e-11 leaves room for
    # the unbounded families' large values at |x| ~ 4
    assert_close_rel(y, y_ref, 1e-11, "f")
    assert_close_rel(grad_x, ref_x, 1e-11, "df/dx")
    assert_close_rel(grad_a * act.inv_lam, ref_a, 1e-11, "df/da")


@pytest.fixture
def inductor_only(monkeypatch):
    """``compile=True`` with inductor's kernels only (the path off the CPU and for maps
    without a native kernel)."""
    monkeypatch.setattr(poly_native, "ENABLED", False)


@pytest.mark.slow  # inductor compiles a forward and a backward kernel per case (~10 s each)
@pytest.mark.parametrize(("units", "shape"), [(None, (3, 4, 5, 5)), (6, (70, 6)), (4, (5, 4, 3))])
def test_compiled_kernels_match_eager_in_float64(units, shape, inductor_only):
    # shared over a 4-d input; per unit with rows not a multiple of the reduction's row
    # block (64 + 6) and with spatial axes
    _compare_compiled_with_eager("chebyshev", {}, 6, units, shape, 1e-12)


def _compare_compiled_with_eager(family, kwargs, degree, units, shape, rtol, *, need_x=True, need_a=True, seed=3):
    gen = torch.Generator().manual_seed(seed)
    eager = OrthoPoly(family, degree, num_units=units, dtype=torch.float64, **kwargs)
    compiled = OrthoPoly(family, degree, num_units=units, dtype=torch.float64, compile=True, **kwargs)
    with torch.no_grad():
        eager.coeffs.add_(0.3 * torch.randn(eager.coeffs.shape, generator=gen, dtype=torch.float64))
        compiled.coeffs.copy_(eager.coeffs)
    eager.coeffs.requires_grad_(need_a)
    compiled.coeffs.requires_grad_(need_a)
    x = (2 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_(need_x)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    y1, y2 = eager(x), compiled(x)
    assert_close_rel(y2, y1, rtol, "f")
    g1 = torch.autograd.grad(y1, [x] * need_x + [eager.coeffs] * need_a, g)
    g2 = torch.autograd.grad(y2, [x] * need_x + [compiled.coeffs] * need_a, g)
    names = ["df/dx"] * need_x + ["df/da"] * need_a
    for a, b, what in zip(g2, g1, names, strict=True):
        assert_close_rel(a, b, rtol, what)


# One case per native map, every layout: rows (units on the vector lanes, a unit count and a
# row count that are not multiples of the vector width or the 64-row flush), runs of a
# spatial axis longer than a piece, shared coefficients over a 4-d input; degrees 0, 1, 16.
_NATIVE_CASES = [
    ("chebyshev", {}, 8, 37, (131, 37)),
    ("legendre", {}, 5, None, (3, 4, 5, 7)),
    ("hermite", {}, 16, 3, (2, 3, 4100)),
    ("chebyshev2", {"domain": "tanh"}, 1, 5, (9, 5, 3)),
    ("laguerre", {"domain": "softplus"}, 0, 4, (6, 4)),
    ("jacobi", {"alpha": 0.5, "beta": -0.3}, 6, None, (1000,)),
    ("laguerre", {}, 5, 6, (70, 6)),  # the exponential map, -log Phi(-x), in three pieces
]


@pytest.mark.slow  # each case builds a forward and a backward C++ kernel (~2 s each)
@pytest.mark.parametrize(("family", "kwargs", "degree", "units", "shape"), _NATIVE_CASES)
def test_native_kernels_match_eager_in_float64(family, kwargs, degree, units, shape):
    act = OrthoPoly(family, degree, num_units=units, dtype=torch.float64, **kwargs)
    assert poly_native.supports(torch.zeros(1, dtype=torch.float64), act._rec), act.map.name
    # FMAs and the sin/cos series round differently from the eager ops: ~1e-15 relative
    _compare_compiled_with_eager(family, kwargs, degree, units, shape, 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(("need_x", "need_a"), [(True, False), (False, True)])
@pytest.mark.parametrize("units", [None, 6])
def test_native_backward_computes_only_what_is_needed(need_x, need_a, units):
    _compare_compiled_with_eager("chebyshev", {}, 4, units, (70, 6), 1e-12, need_x=need_x, need_a=need_a)


@pytest.mark.slow
def test_native_kernels_in_float32_agree_with_float64_and_are_deterministic():
    gen = torch.Generator().manual_seed(5)
    act = OrthoPoly("chebyshev", 8, num_units=40, compile=True)
    x = torch.randn(300, 40, generator=gen)
    g = torch.randn(300, 40, generator=gen)

    def run(layer, xin):
        xin = xin.clone().requires_grad_(True)
        y = layer(xin)
        return (y, *torch.autograd.grad(y, (xin, layer.coeffs), g.to(xin.dtype)))

    first, second = run(act, x), run(act, x)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    reference = run(act.double(), x.double())
    # float32 erf is Abramowitz-Stegun 7.1.26 (|error| 1.5e-7) in torch's vector library
    for a, b, what in zip(first, reference, ("f", "df/dx", "df/da"), strict=True):
        assert_close_rel(a.double(), b, 2e-5, what)


@pytest.mark.slow
def test_native_kernels_split_work_over_threads():
    x = torch.randn(257, 33, dtype=torch.float64, requires_grad=True)
    act = OrthoPoly("legendre", 7, num_units=33, dtype=torch.float64, compile=True)
    outputs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            y = act(x)
            outputs.append((y, *torch.autograd.grad(y.square().sum(), (x, act.coeffs))))
    finally:
        torch.set_num_threads(threads)
    for a, b, what in zip(outputs[0], outputs[1], ("f", "df/dx", "df/da"), strict=True):
        assert_close_rel(a, b, 1e-13, what)


@pytest.mark.slow
def test_native_kernels_rebuild_a_recurrence_from_its_key(monkeypatch):
    # a layer unpickled in a fresh process never ran the constructor that registers its
    # recurrence; the custom ops get only the key, which names it completely
    for family, kwargs in [("chebyshev", {}), ("jacobi", {"alpha": 0.5, "beta": -0.3}), ("legendre", {"domain": "tanh"})]:
        rec = OrthoPoly(family, 5, num_units=3, **kwargs)._rec
        monkeypatch.delitem(poly_native._RECURRENCES, rec.key)
        assert poly_native._recurrence(rec.key) == rec
    for bad in ["erf/1/(1.0, 0.0)/((2, 0.0),)", "erf/1/(1.0,)/()", "nonsense"]:
        with pytest.raises(ValueError, match="malformed recurrence key"):
            poly_native._recurrence(bad)
    act = OrthoPoly("chebyshev", 4, num_units=6, dtype=torch.float64)
    monkeypatch.delitem(poly_native._RECURRENCES, act._rec.key)
    _compare_compiled_with_eager("chebyshev", {}, 4, 6, (70, 6), 1e-12)


def test_native_kernels_need_a_vector_isa(monkeypatch):
    # without one, inductor's at::vec is not there to build on: compile=True uses inductor
    act = OrthoPoly("chebyshev", 4)
    monkeypatch.setattr(poly_native, "_VECTOR_ISA", [False])
    assert not poly_native.supports(torch.zeros(3), act._rec)
    monkeypatch.setattr(poly_native, "_VECTOR_ISA", [True])
    assert poly_native.supports(torch.zeros(3), act._rec)
    assert not poly_native.supports(torch.zeros(3, dtype=torch.float16), act._rec)


def test_native_ops_refuse_inputs_they_would_misread():
    act = OrthoPoly("chebyshev", 2, num_units=4, dtype=torch.float64)
    key = act._rec.key
    x = torch.randn(4, 5, 1, dtype=torch.float64).transpose(0, 1)  # (5, 4, 1), not contiguous
    a = act.coeffs.detach().T.contiguous()  # (3, 4)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        poly_native.native_forward(x, a, key)
    x = x.contiguous()
    with pytest.raises(RuntimeError, match="coefficients must be"):
        poly_native.native_forward(x, a[:, 0].contiguous(), key)  # shared coefficients, per-unit x
    with pytest.raises(RuntimeError, match="share a dtype"):
        poly_native.native_forward(x, a.float(), key)
    with pytest.raises(RuntimeError, match="does not match the recurrence"):
        poly_native.native_backward(x, x, a, 5, key, True, True)
    with pytest.raises(RuntimeError, match="coefficients for size"):
        poly_native.native_backward(x, x, a[:1], 3, key, True, True)


@pytest.mark.slow
def test_compiled_layer_takes_an_empty_batch():
    act = OrthoPoly("chebyshev", 3, num_units=4, compile=True, dtype=torch.float64)
    x = torch.zeros(0, 4, 2, dtype=torch.float64, requires_grad=True)
    y = act(x)
    assert y.shape == x.shape
    gx, ga = torch.autograd.grad(y.sum(), (x, act.coeffs))
    assert gx.shape == x.shape and torch.equal(ga, torch.zeros_like(ga))


@pytest.mark.slow
def test_inductor_kernels_of_the_exponential_map(inductor_only):
    # off the CPU the exponential map (log_ndtr) runs in inductor's kernels
    _compare_compiled_with_eager("laguerre", {}, 4, 6, (70, 6), 1e-12)


@pytest.mark.slow
def test_native_exponential_map_across_its_pieces():
    # x <= 0, 0 < x <= X, x > X (X = 25 in float64): t = -log Phi(-x) and its derivative
    # agree with the eager log_ndtr on both sides of each switch and far into the tails
    act = OrthoPoly("laguerre", 3, dtype=torch.float64)
    compiled = OrthoPoly("laguerre", 3, dtype=torch.float64, compile=True)
    x = torch.tensor([-40.0, -8.0, -1e-3, 0.0, 1e-3, 3.0, 9.99, 10.01, 24.9, 25.1, 40.0], dtype=torch.float64)
    t_ref = act.map.value(x)
    x = x.requires_grad_(True)
    y1, y2 = act(x), compiled(x)
    assert_close_rel(y2, y1, 1e-12, "f")
    g1, g2 = (torch.autograd.grad(y, x, torch.ones_like(y))[0] for y in (y1, y2))
    assert_close_rel(g2, g1, 1e-12, "df/dx")
    assert torch.isfinite(t_ref).all()


@pytest.mark.slow
def test_native_layer_inside_an_outer_torch_compile():
    # the kernels are torch.library custom ops: an outer torch.compile sees opaque operators
    gen = torch.Generator().manual_seed(6)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8, dtype=torch.float64),
        OrthoPoly("chebyshev", 6, num_units=8, compile=True, dtype=torch.float64),
        torch.nn.Linear(8, 1, dtype=torch.float64),
    )
    x = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    outer = torch.compile(model, fullgraph=True)
    y1, y2 = model(x), outer(x)
    g1 = torch.autograd.grad(y1.sum(), list(model.parameters()))
    g2 = torch.autograd.grad(y2.sum(), list(model.parameters()))
    assert_close_rel(y2, y1, 1e-12, "f")
    for a, b in zip(g2, g1, strict=True):
        assert_close_rel(a, b, 1e-12, "gradient")


@pytest.mark.parametrize("units", [None, 5])
def test_torch_func_transforms_see_the_same_function(units):
    # under grad/vmap the layer runs plain differentiable ops; they must agree with the
    # fused autograd function
    gen = torch.Generator().manual_seed(4)
    act = OrthoPoly("legendre", 5, num_units=units, dtype=torch.float64)
    x = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    params = {"coeffs": act.coeffs.detach()}

    def loss(p, xb):
        return functional_call(act, p, (xb,)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)["coeffs"]
    for i in range(x.shape[0]):
        coeffs = act.coeffs.detach().clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(functional_call(act, {"coeffs": coeffs}, (x[i],)).square().sum(), coeffs)
        assert_close_rel(per_sample[i], expected, 1e-12, f"sample {i}")


def test_float32_module_converted_to_float64_keeps_exact_constants():
    # the recurrence scales and derivative matrix are made in the coefficients' dtype on
    # demand, so .double() after a float32 build is as exact as building in float64
    built64 = OrthoPoly("legendre", 8, num_units=3, dtype=torch.float64)
    converted = OrthoPoly("legendre", 8, num_units=3).double()
    with torch.no_grad():
        converted.coeffs.copy_(built64.coeffs)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(converted.inv_lam, built64.inv_lam) and torch.equal(converted.dmat, built64.dmat)
    ga = torch.autograd.grad(converted(x).sum(), x)[0]
    gb = torch.autograd.grad(built64(x).sum(), x)[0]
    assert torch.equal(ga, gb)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, torch
    from permsym.layers import OrthoPoly
    torch.manual_seed(0)
    x = torch.randn(2048, 512, requires_grad=True)
    g = torch.randn(2048, 512)
    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) * 1024
    def extra(layer):
        def step():
            x.grad = None
            layer(x).backward(g)
        step(); step()
        x.grad = None
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = rss("VmRSS")
        step()
        return rss("VmHWM") - before
    floor = extra(lambda t: t.clone())
    out = {d: (extra(OrthoPoly("chebyshev", d, num_units=512)) - floor) / (x.numel() * 4) for d in (4, 8, 16)}
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_forward_backward_peak_memory_is_small_and_flat_in_degree():
    # every large allocation mmapped (fixed glibc threshold), so RSS follows live tensors;
    # the floor y = x.clone() holds the same output and input gradient as the layer
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, env=env, check=True)
    extra = json.loads(proc.stdout)
    # the target is at most four input-sized tensors; the panel buffers are far smaller
    assert all(v < 1.0 for v in extra.values()), extra
    assert max(extra.values()) - min(extra.values()) < 0.5, extra
