r"""The batched kernels of :class:`~permsym.layers.modular.ModularMLP` (feature-major blocks).

Hidden state is ``(M, W, N)`` (module, unit, sample). The in-module blocks of all modules are
one ``bmm``/``baddbmm``; link $k$ is split into runs of consecutive modules whose sources are
consecutive too (:func:`link_runs`), each one in-place ``baddbmm_`` on contiguous slices, and
for ring wirings the interior modules' forward and weight-gradient products are one ``bmm``
over overlapping windows of the hidden state (:class:`BlockPlan`). :class:`_ModuleBlocks`
writes the backward out with the same products; :class:`_LinearReLU` is the input layer with
a fused ReLU. Nothing is gathered or transposed and no dense ``(M W)^2`` matrix is formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BlockPlan", "block_plan", "link_runs", "module_blocks"]

_IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}
"""Activations whose in-place form autograd differentiates from the output alone."""


def _gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b + bias`` as one GEMM (``bias`` broadcast, or none)."""
    return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)


class _LinearReLU(torch.autograd.Function):
    """``relu(weight @ xt + bias)`` whose backward masks the incoming gradient in place
    (it is the first hidden layer's fresh input gradient; see :func:`module_blocks`)."""

    @staticmethod
    def forward(xt, weight, bias):  # noqa: D102
        return _gemm(weight, xt, bias).relu_()

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        xt, weight, bias = inputs
        ctx.save_for_backward(xt, weight, output)
        ctx.has_bias = bias is not None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # noqa: D102
        xt, weight, out = ctx.saved_tensors
        g = g.contiguous()
        torch.ops.aten.threshold_backward.grad_input(g, out, 0, grad_input=g)
        grad_x = weight.T @ g if ctx.needs_input_grad[0] else None
        grad_w = g @ xt.T if ctx.needs_input_grad[1] else None
        grad_b = g.sum(1, keepdim=True) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _feature_major_act(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Apply ``act`` to fresh feature-major units ``h`` (``(M W, N)`` or ``(M, W, N)``, not a
    view: an in-place op on a view would make autograd copy the whole base): in place when
    that is safe (saving an allocation), else directly when element-wise; per-unit
    activations (unit axis = dim 1) see the ``(N, M W)`` transpose (a copy there and back)."""
    if type(act) in _IN_PLACE:
        return _IN_PLACE[type(act)](h)
    if not getattr(act, "permsym_unit_params", None):
        return act(h)
    return act(h.reshape(-1, h.shape[-1]).T).T.reshape(h.shape)


def link_runs(sources: list[list[int]]) -> tuple[tuple[int, int, int, int], ...]:
    """``(link, first module, first source, length)``: maximal runs of consecutive modules
    whose ``link``-th sources are consecutive too, so that each run is one batched product
    on contiguous slices of the (module-first) hidden state.

    Examples:
        >>> link_runs([[1, 3], [2, 0], [0, 1], [3, 2]])  # ring of 4, offsets +1, -1
        ((1, 0, 1, 2), (1, 2, 0, 1), (1, 3, 3, 1), (2, 0, 3, 1), (2, 1, 0, 3))
    """
    runs = []
    links = len(sources[0]) if sources else 0
    for k in range(links):
        start = 0
        for m in range(1, len(sources) + 1):
            if m == len(sources) or sources[m][k] != sources[m - 1][k] + 1:
                runs.append((k + 1, start, sources[start][k], m - start))
                start = m
    return tuple(runs)


@dataclass(frozen=True)
class BlockPlan:
    """How :class:`_ModuleBlocks` computes a layer for one wiring (static, hashable).

    ``runs``: :func:`link_runs` of every block (own block first). ``window``: for wirings
    whose sources sit at the same offsets $-a..b$ around every module (rings), ``(first,
    count, a, perm)``: modules ``first .. first + count - 1`` read the contiguous rows of
    modules ``m - a .. m + b``, so their forward and weight-gradient products are one
    ``bmm`` each with $(1 + K) W$ wide operands (``perm`` orders the weight columns by
    offset); ``edges`` are the runs of the other modules. ``None`` when not a window wiring.
    """

    runs: tuple[tuple[int, int, int, int], ...]
    window: tuple[int, int, int, tuple[int, ...]] | None = None
    edges: tuple[tuple[int, int, int, int], ...] = ()


def block_plan(sources: list[list[int]], width: int) -> BlockPlan:
    """The :class:`BlockPlan` of a ``(M, K)`` wiring given as nested lists."""
    modules = len(sources)
    runs = ((0, 0, 0, modules), *link_runs(sources))
    links = len(sources[0]) if sources else 0
    if links == 0:
        return BlockPlan(runs)
    centred = [[(s - m + modules // 2) % modules - modules // 2 for s in row] for m, row in enumerate(sources)]
    offsets = [0, *centred[0]]
    low, high = min(offsets), max(offsets)
    if any(row != centred[0] for row in centred) or sorted(offsets) != list(range(low, high + 1)):
        return BlockPlan(runs)
    count = modules - (high - low)
    if count < 2:
        return BlockPlan(runs)
    perm = tuple(offsets.index(o) * width + i for o in range(low, high + 1) for i in range(width))
    edge_modules = [m for m in range(modules) if not -low <= m < -low + count]
    edges = tuple((k, m, m if k == 0 else sources[m][k - 1], 1) for m in edge_modules for k in range(links + 1))
    return BlockPlan(runs, (-low, count, -low, perm), edges)


def _block(w: torch.Tensor, k: int, dst: int, n: int, width: int) -> torch.Tensor:
    return w[dst : dst + n, :, k * width : (k + 1) * width]


class _ModuleBlocks(torch.autograd.Function):
    r"""$y_m = b_m + W_{m,0} h_m + \sum_k W_{m,k} h_{s(m,k)}$ on feature-major ``(M, W, N)``
    tensors, the blocks of ``w`` laid out ``(M, W_out, (1 + K) W_in)``.

    Forward and backward use only ``bmm``/``baddbmm_`` on contiguous slices or strided
    windows of ``h``: nothing is gathered or transposed; autograd saves ``h`` and ``w``.
    """

    @staticmethod
    def forward(h, w, bias, plan, relu):  # noqa: D102
        out = _ModuleBlocks._blocks(h, w, bias, plan)
        return out.relu_() if relu else out

    @staticmethod
    def _blocks(h, w, bias, plan):
        width = h.shape[1]
        if plan.window is None:
            out = torch.bmm(w[..., :width], h) if bias is None else torch.baddbmm(bias.unsqueeze(-1), w[..., :width], h)
            for k, dst, src, n in plan.runs[1:]:
                out[dst : dst + n].baddbmm_(_block(w, k, dst, n, width), h[src : src + n])
            return out
        first, count, _, _ = plan.window
        out = torch.empty_like(h)
        inner = slice(first, first + count)
        if bias is None:
            torch.bmm(_window_weights(w, plan), _window(h, plan), out=out[inner])
        else:
            torch.baddbmm(bias[inner].unsqueeze(-1), _window_weights(w, plan), _window(h, plan), out=out[inner])
        for m in {dst for _, dst, _, _ in plan.edges}:
            out[m].copy_(bias[m].unsqueeze(-1).expand_as(out[m])) if bias is not None else out[m].zero_()
        for k, dst, src, n in plan.edges:
            out[dst : dst + n].baddbmm_(_block(w, k, dst, n, width), h[src : src + n])
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        h, w, bias, plan, relu = inputs
        ctx.save_for_backward(h, w, output if relu else None)
        ctx.plan = plan
        ctx.has_bias = bias is not None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # noqa: D102
        h, w, out = ctx.saved_tensors
        plan: BlockPlan = ctx.plan
        g = g.contiguous()
        if out is not None:  # relu epilogue: mask the incoming gradient in place (see module_blocks)
            torch.ops.aten.threshold_backward.grad_input(g, out, 0, grad_input=g)
        width = h.shape[1]
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.bmm(w[..., :width].mT, g)
            for k, dst, src, n in plan.runs[1:]:
                grad_h[src : src + n].baddbmm_(_block(w, k, dst, n, width).mT, g[dst : dst + n])
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(w)  # every block is written: runs cover each link once
            blocks = plan.runs
            if plan.window is not None:
                first, count, _, perm = plan.window
                inner = torch.bmm(g[first : first + count], _window(h, plan).mT)
                grad_w[first : first + count] = inner.index_select(2, _inverse(perm, inner.device))
                blocks = plan.edges
            for k, dst, src, n in blocks:
                _block(grad_w, k, dst, n, width).copy_(torch.bmm(g[dst : dst + n], h[src : src + n].mT))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(-1)
        return grad_h, grad_w, grad_b, None, None


def _window(h: torch.Tensor, plan: BlockPlan) -> torch.Tensor:
    """``(count, (1 + K) W, N)`` overlapping view: rows of modules ``m - a .. m + b``."""
    assert plan.window is not None
    first, count, before, perm = plan.window
    _, width, batch = h.shape
    return h.as_strided(
        (count, len(perm), batch), (width * batch, batch, 1), h.storage_offset() + (first - before) * width * batch
    )


def _window_weights(w: torch.Tensor, plan: BlockPlan) -> torch.Tensor:
    assert plan.window is not None
    first, count, _, perm = plan.window
    return w[first : first + count].index_select(2, torch.tensor(perm, device=w.device))


def _inverse(perm: tuple[int, ...], device: torch.device) -> torch.Tensor:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return torch.tensor(inv, device=device)


def module_blocks(
    h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, sources: torch.Tensor,
    plan: BlockPlan | None = None, *, relu: bool = False,
) -> torch.Tensor:
    r"""One modular hidden layer on feature-major ``h`` ``(M, W, N)``, before the activation
    or, with ``relu=True``, followed by a fused ReLU.

    ``w``: ``(M, W, (1 + K) W)`` weights (own block first, then one block per link, already
    masked); ``bias``: ``(M, W)`` or ``None``; ``sources``: the ``(M, K)`` wiring, ``plan``
    its :func:`block_plan` (computed from ``sources`` when not given). Under
    ``torch.func`` transforms (``vmap``, ``grad``) the same function is computed with plain
    differentiable ops (a gather per link), which those transforms can batch.

    Note:
        The fused ReLU masks the incoming gradient in place instead of allocating a new
        one, so the output must feed a single op that hands back a fresh gradient (in
        :class:`ModularMLP`: the next layer's blocks or the head's GEMM).
    """
    if torch._C._are_functorch_transforms_active():
        width = h.shape[1]
        out = torch.bmm(w[..., :width], h)
        if bias is not None:
            out = out + bias.unsqueeze(-1)
        for k in range(sources.shape[1]):
            src = h.index_select(0, sources[:, k])
            out = out + torch.bmm(w[..., (k + 1) * width : (k + 2) * width], src)
        return torch.relu(out) if relu else out
    if plan is None:
        plan = block_plan(sources.tolist(), h.shape[1])
    return _ModuleBlocks.apply(h.contiguous(), w, bias, plan, relu)
