r"""Fused evaluation of $f(x) = \sum_n a_n p_n(s(x))$ with a recompute-in-backward gradient.

The forward pass runs the three-term recurrence with two basis tensors alive and
accumulates $f$ on the fly; it saves only $x$ and the coefficients. The backward pass runs
the recurrence again and, in the same sweep, accumulates

* $\partial L / \partial a_n = \sum g \, p_n(s(x))$ (summed over all axes but the unit axis),
* $f'(t) = \sum_k e_k p_k(t)$ with $e = a D$, where $D$ is the exact derivative matrix
  $p_n' = \sum_{k<n} D_{nk} p_k$ (so no second recurrence for $p_n'$ is needed),

then returns $g \cdot f'(s(x)) \cdot s'(x)$.

Eager passes work panel by panel (:data:`PANEL` elements, a cache-sized slice of rows):
$t$, $s'$ and the two basis tensors live in panel-sized buffers allocated once per call
and reused by every panel, and results are written straight into the output (forward)
or the input gradient (backward). So the extra memory of either pass is a few panels, not
input-sized tensors, at every degree, and every in-place op runs on data that is in cache.

With ``compile=True`` on the CPU the passes are the single-pass C++ kernels of
:mod:`permsym.layers.poly_native` (where :func:`~permsym.layers.poly_native.supports`
says so); otherwise the same sweeps are written out of place and compiled by inductor
(:func:`compiled_kernels`): one fused loop for the forward, one for the backward's
pointwise part (which also writes $t$ once, so the coefficient reductions do not
recompute the map) and one for the reductions, blocked over rows of the input.

Scaled recurrence: with $u_n = \lambda_n p_n$, the update
$u_{n+1} = u_{n-1} + v_n (t - b_n) u_n$ is a single in-place ``addcmul_`` (two ops when
$b_n \ne 0$), with $v_n = -\lambda_{n-1} / (\lambda_n c_n)$ and
$\lambda_{n+1} = -\lambda_{n-1} c_{n+1} / c_n$; the $1/\lambda_n$ are folded into the
coefficients (``inv_lam``).
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from permsym.layers import poly_native
from permsym.layers.poly_maps import MAPS

PANEL = 1 << 16
"""Elements per panel of the eager passes (256 KiB in float32). Measured on the project's
CPU (2 MiB L2 per core) at degrees 4-16: 2**16 was fastest; 2**13 pays per-op Python
overhead (1.9x slower), 2**18 falls out of cache (1.3-1.8x slower)."""

PANEL_ACCELERATOR = 1 << 20
"""Panel size off the CPU (GPUs): few, large panels, so that kernel launches stay few; the
working set is then about five 4 MiB buffers (float32)."""


def _panel_size(x: torch.Tensor, panel: int | None) -> int:
    if panel is not None:
        return panel
    return PANEL if x.device.type == "cpu" else PANEL_ACCELERATOR

_ROW_BLOCK = 32  # rows per block of the compiled per-unit reductions


@dataclass(frozen=True)
class Recurrence:
    """Static (hashable) description of a scaled recurrence and its domain map.

    ``first = (scale, shift)`` gives $u_1 = \\text{scale} \\cdot t + \\text{shift}$ and each
    ``steps[n-1] = (v_n, -v_n b_n)`` gives $u_{n+1}$ from $u_n, u_{n-1}$ ($u_0 = 1$).
    """

    first: tuple[float, float]
    steps: tuple[tuple[float, float], ...]
    map_name: str
    per_unit: bool

    @property
    def key(self) -> str:
        """A string naming this recurrence (the native kernels' custom ops take strings)."""
        return f"{self.map_name}/{int(self.per_unit)}/{self.first!r}/{self.steps!r}"


def scaled_recurrence(b: np.ndarray, c: np.ndarray, map_name: str, per_unit: bool) -> tuple[Recurrence, np.ndarray]:
    """The :class:`Recurrence` for ``(b, c)`` and the scales $\\lambda_n$ (float64)."""
    size = len(b)
    lam = np.ones(size)
    steps = []
    for n in range(1, size - 1):
        v = -lam[n - 1] / (lam[n] * c[n])
        lam[n + 1] = -lam[n - 1] * c[n + 1] / c[n]
        steps.append((float(v), float(-v * b[n])))
    first = (float(1.0 / c[1]), float(-b[0] / c[1])) if size > 1 else (1.0, 0.0)
    rec = Recurrence(first, tuple(steps), map_name, per_unit)
    poly_native.register(rec)
    return rec, lam


# --------------------------------------------------------------------------- panels


@dataclass(frozen=True)
class _Panels:
    """How full-size tensors are cut into panels.

    ``view`` reshapes a tensor of the input's shape to the canonical layout: ``(numel,)``
    for shared coefficients, ``(B, C, S)`` for per-unit ones (unit axis 1, the rest
    flattened into S). Each panel is ``(index, units)``: ``view(t)[index]`` is the panel and
    ``units`` selects its coefficient columns (and rows of the coefficient gradient).
    ``reduce_dims``: the panel axes summed for the coefficient gradient (``()`` when shared:
    a dot product); ``numel``: the largest panel.
    """

    shape: tuple[int, ...]
    panels: tuple[tuple[Any, Any], ...]
    reduce_dims: tuple[int, ...]
    col_shape: tuple[int, ...]
    numel: int

    def view(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.shape)


def _plan(x: torch.Tensor, per_unit: bool, panel: int) -> _Panels:
    if not per_unit:
        n = x.numel()
        size = min(panel, n)
        return _Panels((n,), tuple((slice(i, i + size), None) for i in range(0, n, size)), (), (), size)
    rows, units = x.shape[0], x.shape[1]
    rest = x[0, 0].numel()
    shape = (rows, units, rest)
    if units * rest <= panel or units == 1:
        step = max(1, panel // (units * rest))
        panels = tuple((slice(b, b + step), slice(None)) for b in range(0, rows, step))
        return _Panels(shape, panels, (0, 2), (units, 1), min(step, rows) * units * rest)
    step = max(1, panel // rest)  # one row is too large: cut it into ranges of units
    panels = tuple(((b, slice(c, c + step)), slice(c, c + step)) for b in range(rows) for c in range(0, units, step))
    return _Panels(shape, panels, (1,), (units, 1), min(step, units) * rest)


class _Reducer:
    """Adds $\\sum g \\, u$ of one panel to row ``k`` of the coefficient gradient, through
    one reused scratch panel: memory does not grow with the degree. Rows of units
    (``(b, C, 1)`` panels) reduce by a matrix-vector product with ones."""

    def __init__(self, plan: _Panels, size: int, like: torch.Tensor) -> None:
        self.plan = plan
        units = plan.shape[1] if plan.col_shape else None
        self.grads = like.new_zeros((size,) if units is None else (size, units))
        self.gemv = plan.reduce_dims == (0, 2) and plan.shape[2] == 1
        self.ones = like.new_ones(1, plan.numel // plan.shape[1]) if self.gemv else None

    def add(self, k: int, gp: torch.Tensor, u: torch.Tensor | None, scratch: torch.Tensor, units: Any) -> None:
        prod = gp if u is None else torch.mul(gp, u, out=scratch)
        if not self.plan.reduce_dims:
            self.grads[k].add_(prod.sum() if u is None else torch.dot(gp, u))
        elif self.gemv:
            rows = prod.shape[0]
            assert self.ones is not None
            self.grads[k : k + 1].addmm_(self.ones[:, :rows], prod.view(rows, -1))
        else:
            self.grads[k, units].add_(prod.sum(self.plan.reduce_dims))


def _columns(a: torch.Tensor, plan: _Panels, dtype: torch.dtype) -> list[torch.Tensor]:
    """Coefficient columns ``a[..., k]`` shaped to broadcast against a panel."""
    a = a.to(dtype)
    if not plan.col_shape:
        return list(a.unbind(-1))
    return [col.reshape(plan.col_shape) for col in a.T.contiguous().unbind(0)]


class _Buffers:
    """Panel-sized scratch tensors, allocated once per pass and viewed per panel."""

    def __init__(self, like: torch.Tensor, numel: int, count: int) -> None:
        self.flat = [like.new_empty(numel) for _ in range(count)]

    def views(self, shape: torch.Size) -> list[torch.Tensor]:
        n = math.prod(shape)
        return [b[:n].view(shape) for b in self.flat]


def _sweep(t: torch.Tensor, rec: Recurrence, ua: torch.Tensor, ub: torch.Tensor, one: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield $u_1, u_2, \\dots$ computed in place in the two buffers ``ua``, ``ub``."""
    scale, shift = rec.first
    cur = torch.mul(t, scale, out=ua)
    if shift:
        cur.add_(shift)
    yield cur
    prev = None
    for v, w in rec.steps:
        nxt = torch.addcmul(one, t, cur, value=v, out=ub) if prev is None else prev.addcmul_(t, cur, value=v)
        if w:
            nxt.add_(cur, alpha=w)
        prev, cur = cur, nxt
        yield cur


def _sel(cols: list[torch.Tensor], units: Any) -> list[torch.Tensor]:
    return cols if units is None or units == slice(None) else [c[units] for c in cols]


def eager_forward(x: torch.Tensor, a: torch.Tensor, rec: Recurrence, *, panel: int | None = None) -> torch.Tensor:
    """$\\sum_n a_n u_n(s(x))$ for already scaled coefficients ``a`` (no autograd graph)."""
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    plan = _plan(x, rec.per_unit, _panel_size(x, panel))
    cols = _columns(a, plan, x.dtype)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    xv, yv = plan.view(x), plan.view(out)
    fill = MAPS[rec.map_name].fill
    bufs = _Buffers(x, plan.numel, 3)
    one = x.new_ones(())
    for index, units in plan.panels:
        xp, yp = xv[index], yv[index]
        c = _sel(cols, units)
        if len(c) == 1:
            yp.copy_(c[0].expand_as(yp))
            continue
        tb, ua, ub = bufs.views(xp.shape)
        t, _ = fill(xp, tb, None)
        for k, u in enumerate(_sweep(t, rec, ua, ub, one), start=1):
            if k == 1:
                torch.addcmul(c[0], u, c[1], out=yp)
            else:
                yp.addcmul_(u, c[k])
    return out


def eager_backward(
    x: torch.Tensor, g: torch.Tensor, a: torch.Tensor, e: torch.Tensor, rec: Recurrence,
    need_x: bool, need_a: bool, *, panel: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x, grad_a)`` for scaled coefficients ``a`` and ``e = a D`` (scaled alike).

    ``grad_a`` is in the scaled basis (multiply by ``inv_lam``), shape ``a.shape``.
    """
    if x.numel() == 0:
        return torch.zeros_like(x) if need_x else None, torch.zeros_like(a) if need_a else None
    plan = _plan(x, rec.per_unit, _panel_size(x, panel))
    size = a.shape[-1]
    ecols = _columns(e, plan, x.dtype)
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None
    reducer = _Reducer(plan, size, x) if need_a else None
    xv, gv = plan.view(x), plan.view(g)
    gxv = plan.view(grad_x) if grad_x is not None else None
    domain_map = MAPS[rec.map_name]
    bufs = _Buffers(x, plan.numel, 5)
    one = x.new_ones(())
    last = size - 1 if need_a else size - 2  # the highest u_k either result needs
    for index, units in plan.panels:
        xp, gp = xv[index], gv[index]
        e_p = _sel(ecols, units)
        tb, db, ua, ub, scratch = bufs.views(xp.shape)
        t, d = domain_map.fill(xp, tb, db if need_x else None)
        if reducer is not None:
            reducer.add(0, gp, None, scratch, units)
        gxp = gxv[index] if gxv is not None else None
        if gxp is not None:
            gxp.copy_(e_p[0].expand_as(gxp))
        if last >= 1:
            for k, u in enumerate(_sweep(t, rec, ua, ub, one), start=1):
                if reducer is not None:
                    reducer.add(k, gp, u, scratch, units)
                if gxp is not None and k < size - 1:
                    gxp.addcmul_(u, e_p[k])
                if k >= last:
                    break
        if gxp is not None:
            gxp.mul_(gp)
            if d is not None:
                gxp.mul_(d)
    grad_a = None
    if reducer is not None:
        grad_a = reducer.grads.T if rec.per_unit else reducer.grads
    return grad_x, grad_a


# --------------------------------------------------------------------------- plain autograd


def plain_forward(x: torch.Tensor, a: torch.Tensor, rec: Recurrence) -> torch.Tensor:
    """Out-of-place, differentiable $\\sum_n a_n u_n(s(x))$ (``a`` scaled), for ``torch.func``
    transforms and inductor; keeps every basis tensor alive under autograd."""
    cols = _broadcast_columns(a, x, rec.per_unit)
    y = cols[0] + torch.zeros_like(x)
    for k, u in enumerate(_plain_sweep(MAPS[rec.map_name].value(x), rec, len(cols) - 1), start=1):
        y = y + cols[k] * u
    return y


def _broadcast_columns(a: torch.Tensor, x: torch.Tensor, per_unit: bool) -> list[torch.Tensor]:
    if not per_unit:
        return list(a.unbind(-1))
    shape = (a.shape[0],) + (1,) * (x.dim() - 2)
    return [col.reshape(shape) for col in a.unbind(-1)]


def _plain_sweep(t: torch.Tensor, rec: Recurrence, count: int) -> Iterator[torch.Tensor]:
    """Yield $u_1, \\dots, u_{count}$ out of place."""
    if count < 1:
        return
    scale, shift = rec.first
    prev, cur = None, t * scale + shift
    yield cur
    for v, w in rec.steps[: count - 1]:
        nxt = (1.0 if prev is None else prev) + v * t * cur
        if w:
            nxt = nxt + w * cur
        prev, cur = cur, nxt
        yield cur


# --------------------------------------------------------------------------- compiled

_COMPILE_OPTIONS = {"cpp.enable_floating_point_contract_flag": "fast"}  # FMAs in the sweeps
_KERNELS: dict[Recurrence, tuple[Any, Any]] = {}


def _kernel_forward(x: torch.Tensor, a: torch.Tensor, rec: Recurrence) -> torch.Tensor:
    """``x``: ``(B, C, S)`` with ``a``: ``(N+1, C, 1)``, or flat with ``a``: ``(N+1,)``."""
    t, _ = MAPS[rec.map_name].traced(x, False)
    y = a[0] + torch.zeros_like(x)
    for k, u in enumerate(_plain_sweep(t, rec, a.shape[0] - 1), start=1):
        y = y + a[k] * u
    return y


def _kernel_backward(x, g, e, rec: Recurrence, need_a: bool):
    """Pointwise part: ``grad_x`` and, for the reductions, $t = s(x)$ written once."""
    t, d = MAPS[rec.map_name].traced(x, True)
    size = e.shape[0]
    dydt = e[0] + torch.zeros_like(x)
    for k, u in enumerate(_plain_sweep(t, rec, size - 2), start=1):
        dydt = dydt + e[k] * u
    grad_x = dydt * g
    if d is not None:
        grad_x = grad_x * d
    if not need_a:
        return grad_x, None, None
    # t is returned so that inductor stores it once in the pointwise loop and the reduction
    # loop reads it, instead of recomputing the map (erf, sin, ...) there
    return grad_x, _kernel_reductions(t, g, rec, size), t


def _kernel_reductions(t: torch.Tensor, g: torch.Tensor, rec: Recurrence, size: int) -> torch.Tensor:
    r"""$\sum g\, u_k(t)$ for $k = 0..N$: over everything when shared; per unit over rows
    and S, rows in blocks of :data:`_ROW_BLOCK` so that inductor's column-vectorised
    reduction loop walks a few pages at a time instead of all rows. Only the small
    partial sums are stacked (stacking the products would materialise them)."""
    products = [g] + [g * u for u in _plain_sweep(t, rec, size - 1)]
    if not rec.per_unit:
        return torch.stack([p.sum() for p in products])
    rows, units, rest = t.shape
    if rest > 1:
        return torch.stack([p.sum((0, 2)) for p in products])
    main = rows - rows % _ROW_BLOCK
    blocks = [p[:main].reshape(main // _ROW_BLOCK, _ROW_BLOCK, units).sum(1) for p in products]
    out = torch.stack(blocks).sum(1)
    if main < rows:
        out = out + torch.stack([p[main:].sum((0, 2)) for p in products])
    return out


def compiled_kernels(rec: Recurrence) -> tuple[Any, Any]:
    """``torch.compile``'d forward and backward kernels for ``rec`` (cached per recurrence).

    Static shapes: a new input shape compiles again (blocked reductions need the row count).
    Each recurrence gets its own code objects, so dynamo's per-code cache of compiled
    variants (``torch._dynamo.config.recompile_limit``) counts shapes per layer
    configuration, not over every configuration in the process.
    """
    if rec not in _KERNELS:

        def forward(x, a):
            return _kernel_forward(x, a, rec)

        def backward(x, g, e, need_a: bool):
            return _kernel_backward(x, g, e, rec, need_a)

        _KERNELS[rec] = tuple(
            torch.compile(_own_code(fn, len(_KERNELS)), dynamic=False, options=_COMPILE_OPTIONS)
            for fn in (forward, backward)
        )
    return _KERNELS[rec]


def _own_code(fn: Any, tag: int) -> Any:
    """``fn`` with a fresh code object (dynamo keys its cache on code objects)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}", co_qualname=f"{fn.__qualname__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _canonical(x: torch.Tensor, per_unit: bool) -> torch.Tensor:
    if not per_unit:
        return x.reshape(-1)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


# --------------------------------------------------------------------------- autograd


class OrthoPolyFunction(torch.autograd.Function):
    """``apply(x, coeffs, inv_lam, dmat, rec, compiled)``; see the module docstring.

    Saves ``x``, ``coeffs`` and the two constant buffers, nothing else.
    """

    @staticmethod
    def forward(x, coeffs, inv_lam, dmat, rec, compiled):  # noqa: D102
        a = coeffs * inv_lam
        if not compiled:
            return eager_forward(x, a, rec)
        xc = _canonical(x, rec.per_unit)
        if poly_native.supports(x, rec):
            ak = a.T if rec.per_unit else a
            return poly_native.native_forward(xc, ak.to(x.dtype).contiguous(), rec.key).reshape(x.shape)
        forward, _ = compiled_kernels(rec)
        ac = a.T.contiguous().unsqueeze(-1) if rec.per_unit else a
        return forward(xc.detach(), ac.to(x.dtype)).reshape(x.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        x, coeffs, inv_lam, dmat, rec, compiled = inputs
        ctx.save_for_backward(x, coeffs, inv_lam, dmat)
        ctx.rec, ctx.compiled = rec, compiled

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # noqa: D102
        x, coeffs, inv_lam, dmat = ctx.saved_tensors
        rec: Recurrence = ctx.rec
        need_x, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = g.contiguous()
        a, e = coeffs * inv_lam, (coeffs @ dmat) * inv_lam
        if not ctx.compiled:
            grad_x, grad_a = eager_backward(x, g, a, e, rec, need_x, need_a)
        elif poly_native.supports(x, rec):
            xc, gc = _canonical(x, rec.per_unit), _canonical(g, rec.per_unit)
            ek = (e.T if rec.per_unit else e).to(x.dtype).contiguous()
            grad_x, ga = poly_native.native_backward(xc, gc, ek, a.shape[-1], rec.key, need_x, need_a)
            grad_x = grad_x.reshape(x.shape) if need_x else None
            grad_a = (ga.T if rec.per_unit else ga[:, 0]) if need_a else None
        else:
            _, backward = compiled_kernels(rec)
            shape = x.shape
            xc, gc = _canonical(x, rec.per_unit), _canonical(g, rec.per_unit)
            ec = e.T.contiguous().unsqueeze(-1) if rec.per_unit else e
            grad_x, grad_a, _ = backward(xc.detach(), gc, ec.to(x.dtype), need_a)
            grad_x = grad_x.reshape(shape) if need_x else None
            grad_a = grad_a.T if (grad_a is not None and rec.per_unit) else grad_a
        if grad_a is not None:
            grad_a = grad_a.to(coeffs.dtype) * inv_lam
        return grad_x, grad_a, None, None, None, None
