r"""The batched kernels of :class:`~permsym.layers.modular.ModularMLP` (feature-major blocks).

Hidden state is ``(M, W, N)`` (module, unit, sample). In general (:class:`BlockPlan` without
a window) the in-module blocks of all modules are one ``bmm``, and link $k$ is split into
runs of consecutive modules whose sources are consecutive too (:func:`link_runs`), each one
in-place ``baddbmm_`` on contiguous slices. For ring wirings (:class:`Window`) a module's
sources are consecutive rows of the hidden state: forward and weight gradient are one
``bmm`` over overlapping windows of it, the input gradient one ``bmm`` over windows of the
incoming gradient (with the weight blocks transposed and concatenated, a small copy); the
few modules whose rows wrap around use per-block products, or, when the hidden state
carries ghost copies of them (:func:`_fill_ghosts`), join the window. :class:`_ModuleBlocks`
is the layer; :class:`_LinearReLU` the input layer with a fused ReLU. The hidden state is
never gathered or transposed and no dense ``(M W)^2`` matrix is formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BlockPlan", "Window", "block_plan", "link_runs", "module_blocks"]

_IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}
"""Activations whose in-place form autograd differentiates from the output alone."""


def _gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b + bias`` as one GEMM (``bias`` broadcast, or none)."""
    return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)


class _LinearReLU(torch.autograd.Function):
    """``relu(weight @ xt + bias)`` whose backward masks the incoming gradient in place
    (it is the first hidden layer's fresh input gradient; see :func:`module_blocks`)."""

    @staticmethod
    def forward(xt, weight, bias, ghosts):  # noqa: D102
        # ghosts: (rows before, rows after) of wrap-around copies to keep around the output
        if ghosts is None:
            return _bias_act(torch.mm(weight, xt), bias, True)
        out = _ghosted_empty((weight.shape[0], xt.shape[1]), xt, ghosts)
        torch.mm(weight, xt, out=out)
        return _fill_ghosts(_bias_act(out, bias, True), ghosts)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        xt, weight, bias, _ = inputs
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
        return grad_x, grad_w, grad_b, None


def _ghosted_empty(shape: tuple[int, ...], like: torch.Tensor, ghosts: tuple[int, int] | None) -> torch.Tensor:
    """An uninitialised tensor of ``shape``; with ``ghosts = (a, b)``, a view into a buffer
    with ``a`` spare entries of dim 0 before it and ``b`` after (see :func:`_fill_ghosts`)."""
    if ghosts is None:
        return like.new_empty(shape)
    before, after = ghosts
    base = like.new_empty((before + shape[0] + after, *shape[1:]))
    return base[before : before + shape[0]]


def _with_ghosts(t: torch.Tensor, ghosts: tuple[int, int]) -> torch.Tensor:
    """The view of ``t``'s buffer that includes its ghost entries (dim 0)."""
    before, after = ghosts
    shape = (before + t.shape[0] + after, *t.shape[1:])
    return t.as_strided(shape, t.stride(), t.storage_offset() - before * t.stride(0))


def _fill_ghosts(t: torch.Tensor, ghosts: tuple[int, int] | None) -> torch.Tensor:
    """Copy the last ``a`` entries of ``t`` (dim 0) into the ``a`` spare ones before it and
    the first ``b`` into the ``b`` after it: modules $-a..-1$ and $M..M+b-1$ of a ring read
    as its modules $M-a..M-1$ and $0..b-1$, so every module's window is contiguous."""
    if ghosts is None:
        return t
    before, after = ghosts
    n = t.shape[0]
    base = _with_ghosts(t, ghosts)
    base[:before].copy_(t[n - before :])
    base[before + n :].copy_(t[:after])
    return t


def _bias_act(out: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """``out + bias`` then ReLU, in place (``bias`` broadcast). Two passes: the one-pass
    ``aten._add_relu_`` is CPU-only and clamps ``inf`` to the largest float."""
    if bias is not None:
        out.add_(bias)
    return out.relu_() if relu else out


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
class Window:
    """Products of a ring-like wiring, where module $m$ reads modules $m + o$ for the
    offsets $o = $ ``low .. high`` (``blocks[i]``: the weight block of offset ``low + i``).

    Forward and weight gradient: modules ``first .. first + count - 1`` read contiguous
    rows of the hidden state (one ``bmm`` over a strided window, $(1 + K) W$ wide); the
    other modules, whose rows wrap around, use ``edges``: ``(block, dst, src, 1)`` products.
    Input gradient, the transposed products: module $m$ collects from modules $m - o$,
    ``back_first .. back_first + count - 1`` from a window of the gradient, the others
    through the ``back_edges`` products. (Gathering the few wrapped rows into one more
    ``bmm`` was measured slower: the copies cost more than the small products.)
    """

    low: int
    high: int
    blocks: tuple[int, ...]
    first: int
    count: int
    edges: tuple[tuple[int, int, int, int], ...]
    back_first: int
    back_edges: tuple[tuple[int, int, int, int], ...]

    @property
    def span(self) -> int:
        return len(self.blocks)

    @property
    def ghosts(self) -> tuple[int, int]:
        """Modules a layer output keeps before and after itself for the next layer's window."""
        return -self.low, self.high

    def back_order(self) -> list[tuple[int, int]]:
        """``(offset, block)`` of the modules an input gradient collects from, in row order."""
        return [(o, self.blocks[o - self.low]) for o in range(self.high, self.low - 1, -1)]


@dataclass(frozen=True)
class BlockPlan:
    """How :class:`_ModuleBlocks` computes a layer for one wiring (static, hashable).

    ``runs``: :func:`link_runs` of every block (own block first), used when the wiring has
    no :class:`Window` (``window is None``: random and small-world wirings).
    """

    runs: tuple[tuple[int, int, int, int], ...]
    window: Window | None = None


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
    products = [(k, m, m if k == 0 else sources[m][k - 1], 1) for m in range(modules) for k in range(links + 1)]
    edges = tuple(p for p in products if not -low <= p[1] < -low + count)
    back_edges = tuple(p for p in products if not high <= p[2] < high + count)
    blocks = tuple(offsets.index(o) for o in range(low, high + 1))
    return BlockPlan(runs, Window(low, high, blocks, -low, count, edges, high, back_edges))


def _block(w: torch.Tensor, k: int, dst: int, n: int, width: int) -> torch.Tensor:
    return w[dst : dst + n, :, k * width : (k + 1) * width]


def _block_cat(w: torch.Tensor, blocks: Sequence[int], width: int) -> torch.Tensor:
    """Columns of ``w`` ``(.., W, (1 + K) W)`` with its ``W``-wide blocks in ``blocks`` order."""
    return torch.cat([w[..., k * width : (k + 1) * width] for k in blocks], dim=-1)


class _ModuleBlocks(torch.autograd.Function):
    r"""$y_m = b_m + W_{m,0} h_m + \sum_k W_{m,k} h_{s(m,k)}$ on feature-major ``(M, W, N)``
    tensors, the blocks of ``w`` laid out ``(M, W_out, (1 + K) W_in)``.

    Forward and backward use ``bmm``/``baddbmm_`` on contiguous slices or strided windows of
    ``h`` and of the gradient; autograd saves ``h``, ``w`` and, with the fused ReLU, the
    output (its mask).
    """

    @staticmethod
    def forward(h, w, bias, plan, relu, ghost_in, ghost_out):  # noqa: D102
        # block products first, then bias and ReLU in one pass over the output
        out = _ModuleBlocks._blocks(h, w, plan, ghost_in, ghost_out)
        out = _bias_act(out, bias.unsqueeze(-1) if bias is not None else None, relu)
        return _fill_ghosts(out, plan.window.ghosts if ghost_out else None)

    @staticmethod
    def _blocks(h, w, plan, ghost_in=False, ghost_out=False):
        width = h.shape[1]
        win = plan.window
        if win is None:
            out = torch.bmm(w[..., :width], h)
            for k, dst, src, n in plan.runs[1:]:
                out[dst : dst + n].baddbmm_(_block(w, k, dst, n, width), h[src : src + n])
            return out
        out = _ghosted_empty(h.shape, h, win.ghosts if ghost_out else None)
        if ghost_in:  # every module's rows are contiguous, wrap-around included
            _window_bmm(_block_cat(w, win.blocks, width), h, win.low, h.shape[0], win.span, out)
            return out
        inner = slice(win.first, win.first + win.count)
        _window_bmm(_block_cat(w[inner], win.blocks, width), h, win.first + win.low, win.count, win.span, out[inner])
        _accumulate(out, w, h, win.edges, transposed=False)
        return out

    @staticmethod
    def _input_grad(g, w, plan):
        r"""$\partial L / \partial h_m = \sum_{(j, k): s(j, k) = m} W_{j,k}^T g_j$."""
        width = g.shape[1]
        win = plan.window
        if win is None:
            grad_h = torch.bmm(w[..., :width].mT, g)
            for k, dst, src, n in plan.runs[1:]:
                grad_h[src : src + n].baddbmm_(_block(w, k, dst, n, width).mT, g[dst : dst + n])
            return grad_h
        grad_h = torch.empty_like(g)
        order = win.back_order()
        first, count = win.back_first, win.count
        weights = torch.cat([_block(w, k, first - o, count, width).mT for o, k in order], dim=2)
        _window_bmm(weights, g, first - win.high, count, win.span, grad_h[first : first + count])
        _accumulate(grad_h, w, g, win.back_edges, transposed=True)
        return grad_h

    @staticmethod
    def _weight_grad(g, h, w, plan, ghost_in):
        width = h.shape[1]
        grad_w = torch.empty_like(w)  # every block is written: runs (or window + edges) cover each
        win = plan.window
        if win is None:
            for k, dst, src, n in plan.runs:
                _block(grad_w, k, dst, n, width).copy_(torch.bmm(g[dst : dst + n], h[src : src + n].mT))
            return grad_w
        # (window g^T)^T: the same product, measured ~8% faster than g window^T in this layout
        if ghost_in:
            _scatter_blocks(grad_w, torch.bmm(_window(h, win.low, h.shape[0], win.span), g.mT).mT, win.blocks)
            return grad_w
        inner = slice(win.first, win.first + win.count)
        _scatter_blocks(grad_w[inner], torch.bmm(_window(h, win.first + win.low, win.count, win.span), g[inner].mT).mT, win.blocks)
        for k, dst, src, n in win.edges:
            _block(grad_w, k, dst, n, width).copy_(torch.bmm(g[dst : dst + n], h[src : src + n].mT))
        return grad_w

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        h, w, bias, plan, relu, ghost_in, _ = inputs
        # with ghosts, h is saved with them (a saved-tensor hook that copies h keeps them)
        ctx.save_for_backward(_with_ghosts(h, plan.window.ghosts) if ghost_in else h, w, output if relu else None)
        ctx.plan, ctx.ghost_in = plan, ghost_in
        ctx.has_bias = bias is not None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # noqa: D102
        h, w, out = ctx.saved_tensors
        plan: BlockPlan = ctx.plan
        if ctx.ghost_in:
            before, after = plan.window.ghosts
            h = h[before : h.shape[0] - after]
        g = g.contiguous()
        if out is not None:  # relu epilogue: mask the incoming gradient in place (see module_blocks)
            torch.ops.aten.threshold_backward.grad_input(g, out, 0, grad_input=g)
        grad_h = _ModuleBlocks._input_grad(g, w, plan) if ctx.needs_input_grad[0] else None
        grad_w = _ModuleBlocks._weight_grad(g, h, w, plan, ctx.ghost_in) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(-1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None, None, None, None


_COLUMNS = 1024
"""Columns (samples) per product of :func:`_window_bmm`: a window of 3 modules x 64 units x
1024 columns (768 KiB in float32) stays in L2 for the next module, whose window shares
two thirds of it (about 10% faster than one product over 4096 columns, cold caches)."""


def _window_bmm(a: torch.Tensor, t: torch.Tensor, start: int, count: int, span: int, out: torch.Tensor) -> None:
    """``out = a @ window(t)`` (see :func:`_window`), in slabs of :data:`_COLUMNS` columns."""
    batch = t.shape[2]
    for c0 in range(0, batch, _COLUMNS):
        c1 = min(batch, c0 + _COLUMNS)
        torch.bmm(a, _window(t[..., c0:c1], start, count, span), out=out[..., c0:c1])


def _window(t: torch.Tensor, start: int, count: int, span: int) -> torch.Tensor:
    """``(count, span W, N)`` overlapping view of ``(M, W, N)``: entry ``i`` holds the rows of
    modules ``start + i .. start + i + span - 1`` (no copy; ``start < 0`` or rows past ``M``
    read the ghost modules of a :func:`_fill_ghosts` buffer)."""
    _, width, batch = t.shape
    module, row = t.stride(0), t.stride(1)  # rows of consecutive modules are consecutive
    return t.as_strided((count, span * width, batch), (module, row, t.stride(2)), t.storage_offset() + start * module)


def _accumulate(out: torch.Tensor, w: torch.Tensor, t: torch.Tensor, products, *, transposed: bool) -> None:
    """Zero the modules the ``(block, dst, src, n)`` products write, then add them:
    ``out[dst] += W_{dst,block} t[src]``, or ``out[src] += W_{dst,block}^T t[dst]``."""
    width = t.shape[1]
    for m in {src if transposed else dst for _, dst, src, _ in products}:
        out[m].zero_()
    for k, dst, src, n in products:
        if transposed:
            out[src : src + n].baddbmm_(_block(w, k, dst, n, width).mT, t[dst : dst + n])
        else:
            out[dst : dst + n].baddbmm_(_block(w, k, dst, n, width), t[src : src + n])


def _scatter_blocks(dst: torch.Tensor, src: torch.Tensor, blocks: Sequence[int]) -> None:
    """Write ``src``'s ``W``-wide column blocks (in ``blocks`` order) into ``dst``'s layout."""
    width = dst.shape[1]
    for j, k in enumerate(blocks):
        dst[..., k * width : (k + 1) * width].copy_(src[..., j * width : (j + 1) * width])


def module_blocks(
    h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, sources: torch.Tensor,
    plan: BlockPlan | None = None, *, relu: bool = False, ghost_in: bool = False, ghost_out: bool = False,
) -> torch.Tensor:
    r"""One modular hidden layer on feature-major ``h`` ``(M, W, N)``, before the activation
    or, with ``relu=True``, followed by a fused ReLU.

    ``w``: ``(M, W, (1 + K) W)`` weights (own block first, then one block per link, already
    masked); ``bias``: ``(M, W)`` or ``None``; ``sources``: the ``(M, K)`` wiring, ``plan``
    its :func:`block_plan` (computed from ``sources`` when not given). Under
    ``torch.func`` transforms (``vmap``, ``grad``) the same function is computed with plain
    differentiable ops (a gather per link), which those transforms can batch.

    ``ghost_in`` / ``ghost_out`` (window wirings only, ignored otherwise): ``h`` comes with /
    the output gets ghost modules around it (:func:`_fill_ghosts`), so that every module's
    forward and weight-gradient product is in one window ``bmm``; :class:`ModularMLP` chains
    them between its fused-ReLU layers. ``ghost_in`` is a promise about ``h``'s storage: only
    for outputs made with ``ghost_out`` (or by the input layer with ghosts), unmodified.

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
    if plan.window is None:
        ghost_in = ghost_out = False
    elif ghost_in:
        _check_ghosts(h, plan.window.ghosts)
    return _ModuleBlocks.apply(h if ghost_in else h.contiguous(), w, bias, plan, relu, ghost_in, ghost_out)


def _check_ghosts(h: torch.Tensor, ghosts: tuple[int, int]) -> None:
    if h.numel() == 0:
        return
    before, after = ghosts
    step = h.stride(0)
    if not h.is_contiguous() or h.storage_offset() < before * step or (
        h.untyped_storage().nbytes() < (h.storage_offset() + (h.shape[0] + after) * step) * h.element_size()
    ):
        raise ValueError(f"module_blocks: ghost_in=True needs {before} + {after} ghost modules around h; h has no room for them")
