r"""Fused evaluation of $f(x) = \sum_n a_n p_n(s(x))$ with a recompute-in-backward gradient.

The forward pass runs the three-term recurrence with two basis tensors alive and
accumulates $f$ on the fly; it saves only $x$ and the coefficients. The backward pass runs
the recurrence again and, in the same sweep, accumulates

* $\partial L / \partial a_n = \sum g \, p_n(s(x))$ (summed over all axes but the unit axis),
* $f'(t) = \sum_k e_k p_k(t)$ with $e = a D$, where $D$ is the exact derivative matrix
  $p_n' = \sum_{k<n} D_{nk} p_k$ (so no second recurrence for $p_n'$ is needed),

then returns $g \cdot f'(s(x)) \cdot s'(x)$. Saved memory is one input-sized tensor at every
degree; the working set of either pass is $t$, two basis tensors and one accumulator.

Scaled recurrence: with $u_n = \lambda_n p_n$, the update
$u_{n+1} = u_{n-1} + v_n (t - b_n) u_n$ is a single in-place ``addcmul_`` (two ops when
$b_n \ne 0$), with $v_n = -\lambda_{n-1} / (\lambda_n c_n)$ and
$\lambda_{n+1} = -\lambda_{n-1} c_{n+1} / c_n$; the $1/\lambda_n$ are folded into the
coefficients (``inv_lam``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from permsym.layers.poly_maps import MAPS


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
    return Recurrence(first, tuple(steps), map_name, per_unit), lam


def _columns(a: torch.Tensor, x: torch.Tensor, per_unit: bool) -> list[torch.Tensor]:
    """Coefficient columns shaped to broadcast against ``x`` (unit axis = dim 1)."""
    if not per_unit:
        return list(a.unbind(-1))
    shape = (a.shape[0],) + (1,) * (x.dim() - 2)
    return [col.reshape(shape) for col in a.unbind(-1)]


def _basis_sweep(t: torch.Tensor, rec: Recurrence):
    """Yield $u_1, u_2, \\dots$ in place, keeping only two basis tensors alive."""
    scale, shift = rec.first
    cur = torch.mul(t, scale)
    if shift:
        cur.add_(shift)
    yield cur
    prev = None
    for v, w in rec.steps:
        if prev is None:
            nxt = torch.addcmul(t.new_ones(()), t, cur, value=v)
        else:
            nxt = prev.addcmul_(t, cur, value=v)
        if w:
            nxt.add_(cur, alpha=w)
        prev, cur = cur, nxt
        yield cur


def evaluate(x: torch.Tensor, a: torch.Tensor, rec: Recurrence) -> torch.Tensor:
    """$\\sum_n a_n u_n(s(x))$ for already scaled coefficients ``a`` (no autograd graph)."""
    t = MAPS[rec.map_name].value(x)
    cols = _columns(a, x, rec.per_unit)
    if len(cols) == 1:
        return torch.zeros_like(x).add_(cols[0])
    y = None
    for k, u in enumerate(_basis_sweep(t, rec), start=1):
        y = torch.addcmul(cols[0], u, cols[1]) if y is None else y.addcmul_(u, cols[k])
    assert y is not None
    return y


def _unit_sum(g: torch.Tensor, per_unit: bool) -> torch.Tensor:
    """Sum over every axis but the unit axis (dim 1), or over all axes when shared."""
    if not per_unit:
        return g.sum()
    return g.sum([d for d in range(g.dim()) if d != 1])


def _unit_dot(g: torch.Tensor, per_unit: bool):
    """``u -> sum(g * u)`` reduced like :func:`_unit_sum`.

    Shared: a flat dot product (no temporary). Per unit: the product goes into one scratch
    tensor reused at every degree (``linalg.vecdot`` over dim 0 left a fresh temporary per
    degree and made peak memory grow with the degree).
    """
    if not per_unit:
        flat = g.reshape(-1)
        return lambda u: torch.linalg.vecdot(flat, u.reshape(-1), dim=0)
    scratch = torch.empty_like(g)
    dims = [d for d in range(g.dim()) if d != 1]
    return lambda u: torch.mul(g, u, out=scratch).sum(dims)


class OrthoPolyFunction(torch.autograd.Function):
    """``apply(x, coeffs, inv_lam, dmat, rec)``; see the module docstring for the math."""

    @staticmethod
    def forward(ctx, x, coeffs, inv_lam, dmat, rec):  # noqa: D102
        ctx.save_for_backward(x, coeffs, inv_lam, dmat)
        ctx.rec = rec
        return evaluate(x, coeffs * inv_lam, rec)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        x, coeffs, inv_lam, dmat = ctx.saved_tensors
        rec: Recurrence = ctx.rec
        need_x, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = g.contiguous()
        size = coeffs.shape[-1]
        grads = [_unit_sum(g, rec.per_unit)] if need_a else []
        reduce = _unit_dot(g, rec.per_unit)
        dydt = None
        if size > 1:
            ecols = _columns((coeffs @ dmat) * inv_lam, x, rec.per_unit)
            sweep = _basis_sweep(MAPS[rec.map_name].value(x), rec)
            for k, u in enumerate(sweep, start=1):
                if need_a:
                    grads.append(reduce(u))
                if need_x and k < size - 1:
                    dydt = torch.addcmul(ecols[0], u, ecols[1]) if dydt is None else dydt.addcmul_(u, ecols[k])
                if not need_a and k >= size - 2:
                    break
            sweep.close()  # release t and the two basis tensors before s'(x) is computed
            del sweep, u
        del reduce  # and the scratch tensor
        grad_a = torch.stack(grads, -1) * inv_lam if need_a else None
        grad_x = None
        if need_x:
            if dydt is None:  # degree 0 (constant) or degree 1 (f' = e_0)
                dydt = torch.zeros_like(x) if size == 1 else torch.zeros_like(x).add_(ecols[0])
            grad_x = dydt.mul_(g)
            derivative = MAPS[rec.map_name].derivative
            if derivative is not None:
                grad_x.mul_(derivative(x))
        return grad_x, grad_a, None, None, None
