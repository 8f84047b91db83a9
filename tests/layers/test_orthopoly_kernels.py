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

from permsym.layers import OrthoPoly, poly_basis
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


@pytest.mark.slow  # inductor compiles a forward and a backward kernel per case (~10 s each)
@pytest.mark.parametrize(("units", "shape"), [(None, (3, 4, 5, 5)), (6, (70, 6)), (4, (5, 4, 3))])
def test_compiled_kernels_match_eager_in_float64(units, shape):
    # shared over a 4-d input; per unit with rows not a multiple of the reduction's row
    # block (64 + 6) and with spatial axes
    gen = torch.Generator().manual_seed(3)
    eager = OrthoPoly("chebyshev", 6, num_units=units, dtype=torch.float64)
    compiled = OrthoPoly("chebyshev", 6, num_units=units, dtype=torch.float64, compile=True)
    with torch.no_grad():
        eager.coeffs.add_(0.3 * torch.randn(eager.coeffs.shape, generator=gen, dtype=torch.float64))
        compiled.coeffs.copy_(eager.coeffs)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    y1, y2 = eager(x), compiled(x)
    g1 = torch.autograd.grad(y1, (x, eager.coeffs), g)
    g2 = torch.autograd.grad(y2, (x, compiled.coeffs), g)
    # the compiled sweeps use FMAs and a series for sin/cos: agreement to rounding (~1e-15)
    assert_close_rel(y2, y1, 1e-12, "f")
    for a, b, what in zip(g2, g1, ("df/dx", "df/da"), strict=True):
        assert_close_rel(a, b, 1e-12, what)


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
