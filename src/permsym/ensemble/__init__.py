r"""Vectorised seed ensembles: many seeds of one architecture trained in one process.

Every seed runs exactly the algorithm of :func:`permsym.train.fit`: initial weights from
``permsym.build(arch, seed=s)``, minibatch order from ``torch.randperm`` on a private
``torch.Generator`` seeded with ``s``, plain SGD $\theta \leftarrow \theta - \eta \nabla \hat J_B$.
The seeds' parameters are stacked (``torch.func.stack_module_state``). A plain ``Sequential`` of
``Linear`` and elementwise layers (``mlp:``) steps all seeds with one ``baddbmm`` per layer under
ordinary autograd (no per-op ``vmap`` dispatch); other models step with one ``vmap`` of ``grad``
over the stack (a short last minibatch is looped over seeds there: vmap takes other matmul
kernels, which are not bit-equal; the batched path checks its short batch once and loops only
if it differs), so on the CPU each seed's result equals the single-seed trainer's bit for bit. Models whose forward pass updates buffers (BatchNorm in
training mode) cannot run under ``vmap``, and some ops (LayerNorm) give other floating-point
results batched: the first step is checked against the single-seed step (batched path, then
``vmap``), and where neither is exact the seeds run in a loop (with a warning).

``device`` puts models and data on a GPU (initial weights are still drawn on the CPU, so they
equal the CPU run's; minibatch orders too). :func:`run_sweep` runs a grid of architectures x
learning rates x seeds on a backend (``local`` or ``ray``) with a resumable cache.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from permsym._errors import check_positive_int

__all__ = ["EnsembleResult", "SweepConfig", "load_sweep_config", "run_sweep", "train"]


@dataclass(frozen=True)
class EnsembleResult:
    """Trained models (one per seed, in order), mean minibatch loss per epoch per seed."""

    seeds: tuple[int, ...]
    models: tuple[nn.Module, ...]
    losses: tuple[tuple[float, ...], ...]
    vectorised: bool

    def to_json(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "losses": [list(v) for v in self.losses], "vectorised": self.vectorised}


def _updates_buffers(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def _per_seed(single: Any, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], X: torch.Tensor,
              y: torch.Tensor, idx: torch.Tensor, rows: list[int] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    outs = [single({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()}, X[idx[i]], y[idx[i]])
            for i in (range(idx.shape[0]) if rows is None else rows)]
    grads = {k: torch.stack([g[k] for g, _ in outs]) for k in params}
    return grads, torch.stack([loss for _, loss in outs])


def _stacked_step(model: nn.Module, loss_fn: Any) -> Any:
    """A batched SGD step for a plain ``Sequential`` of ``Linear`` and ``ReLU`` layers, else ``None``.

    All seeds' layers run as one ``baddbmm`` each and the backward pass is written out with the
    very GEMMs autograd runs for ``F.linear`` in the single-seed trainer (``y = b + x W^T``,
    ``dx = g W``, ``dW = g^T x``, ``db = sum_rows g``), batched over seeds: no per-op ``vmap``
    dispatch and no autograd graph, which dominate the step time of small models. Only the loss
    (per-seed mean) goes through autograd. Returns ``step(params, xb, yb) -> (grads, loss per
    seed)`` for stacked ``params``; the caller checks it against the single-seed step.
    """
    if type(model) is not nn.Sequential or loss_fn not in (F.cross_entropy, F.mse_loss):
        return None
    layers: list[tuple[str, bool]] = []  # (name, has bias) per Linear, ("", False) per ReLU
    for name, m in model.named_children():
        if type(m) is nn.Linear:
            layers.append((name, m.bias is not None))
        elif type(m) is nn.ReLU:
            layers.append(("", False))
        else:
            return None
    if not layers or not layers[0][0]:
        return None

    weight: dict[int, float] = {}

    def step(params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            saved, h = [], xb
            for name, bias in layers:
                saved.append(h)
                if not name:
                    h = torch.relu_(h)  # its input (saved) is not needed: the backward uses the output
                elif bias:
                    h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))
                else:
                    h = torch.bmm(h, params[f"{name}.weight"].transpose(1, 2))
        s, b = h.shape[0], h.shape[1]
        if loss_fn is F.cross_entropy:  # fit's backward: nll_loss (mean) then log_softmax, written out
            with torch.no_grad():
                logp = torch.log_softmax(h.reshape(s * b, -1), 1)
                target = yb.reshape(-1, 1)
                loss = -logp.gather(1, target).view(s, b).mean(1)
                if b not in weight:  # nll_loss's backward value, -1/b rounded in the dtype; once per size
                    weight[b] = float(-(torch.ones((), dtype=h.dtype) / b))
                step_ = torch.zeros_like(logp).scatter_(1, target, weight[b])
                g = torch._log_softmax_backward_data(step_, logp, 1, h.dtype).view(s, b, -1)
        else:
            z = h.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.mse_loss(z, yb, reduction="none").reshape(s, -1).mean(1)
                (g,) = torch.autograd.grad(loss.sum(), [z])
        grads: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for i in range(len(layers) - 1, -1, -1):
                name, bias = layers[i]
                x = saved[i]
                if not name:
                    g = torch.ops.aten.threshold_backward(g, saved[i + 1] if i + 1 < len(saved) else h, 0)
                    continue
                w = params[f"{name}.weight"]
                grads[f"{name}.weight"] = torch.bmm(g.transpose(1, 2), x)
                if bias:
                    grads[f"{name}.bias"] = g.sum(1)
                if i > 0:
                    g = torch.bmm(g, w)
        return {k: grads[k] for k in params}, loss

    return step


def _alignment_rows(params: dict[str, torch.Tensor], count: int) -> list[int]:
    """The first seed of each alignment class of the stacked parameters' slices, and the last seed."""
    seen: set[tuple[int, ...]] = set()
    rows = []
    for i in range(count):
        key = tuple(p[i].data_ptr() % 64 for p in params.values())
        if key not in seen:
            seen.add(key)
            rows.append(i)
    return sorted(set(rows) | {count - 1})


def _per_seed_autograd(model: nn.Module, loss_fn: Any, params: dict[str, torch.Tensor], X: torch.Tensor,
                       y: torch.Tensor, idx: torch.Tensor, rows: list[int] | None = None,
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each seed's step as :func:`permsym.train.fit` takes it: ordinary autograd, one seed at a time
    (only the seeds in ``rows``, stacked in that order, if given)."""
    outs = []
    for i in range(idx.shape[0]) if rows is None else rows:
        p = {k: v[i].detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            loss = loss_fn(functional_call(model, p, (X[idx[i]],)), y[idx[i]])
            outs.append((dict(zip(p, torch.autograd.grad(loss, list(p.values())), strict=True)), loss.detach()))
    return {k: torch.stack([g[k] for g, _ in outs]) for k in params}, torch.stack([loss for _, loss in outs])


def train(
    arch: str,
    data: Any,
    seeds: Sequence[int],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> EnsembleResult:
    """Train ``arch`` once per seed on ``data = (X, y)`` (or a data spec string).

    Args:
        arch: architecture string for :func:`permsym.build`.
        data: ``(X, y)``; float targets use mse, integer labels cross-entropy (as ``fit``).
        seeds: one run per seed (initialisation and minibatch order).
        epochs, lr, batch_size: as :func:`permsym.train.fit`.
        dtype: parameter dtype of the models.
        device: where models and data live (``None``: the CPU); the returned models stay there.

    Examples:
        >>> X, y = torch.randn(70, 6), torch.randint(3, (70,))
        >>> r = train("mlp:6-16-16-3", (X, y), [0, 1, 2], epochs=2, lr=0.1, batch_size=16)
        >>> len(r.models), len(r.losses[0]), r.vectorised
        (3, 2, True)
    """
    from permsym.archs import build
    from permsym.train import TrainingDiverged, fit

    check_positive_int("ensemble.train", "epochs", epochs)
    check_positive_int("ensemble.train", "batch_size", batch_size)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"ensemble.train: lr must be a finite number > 0; got {lr!r}.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("ensemble.train: seeds must not be empty; got [].")
    if isinstance(data, str):
        from permsym.data import load

        data = load(data, dtype=dtype)
    X, y = data
    device = torch.device("cpu") if device is None else torch.device(device)
    X, y = X.to(device), y.to(device)
    models = [build(arch, seed=s).to(device=device, dtype=dtype) for s in seeds]
    def loop(why: str) -> EnsembleResult:
        warnings.warn(f"ensemble.train: {arch!r} {why}; training the seeds one after another.", stacklevel=3)
        fresh = [build(arch, seed=s).to(device=device, dtype=dtype) for s in seeds]
        losses = [fit(m, (X, y), epochs=epochs, lr=lr, batch_size=batch_size, seed=s).losses
                  for m, s in zip(fresh, seeds, strict=True)]
        return EnsembleResult(tuple(seeds), tuple(fresh), tuple(losses), vectorised=False)

    if _updates_buffers(models[0]):
        return loop("updates buffers in training mode (BatchNorm), which vmap cannot batch")
    X = X.to(dtype)
    y = y.to(dtype) if y.is_floating_point() else y
    loss_fn = F.mse_loss if y.is_floating_point() else F.cross_entropy
    for m in models:
        m.train()
    params, buffers = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")

    def loss_one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(base, (p, b), (xb,)), yb)

    single = grad_and_value(loss_one)
    step = vmap(single)
    fast = _stacked_step(models[0], loss_fn)
    mode = "bmm" if fast is not None else "vmap"  # first step checked; bmm -> vmap -> loop on a mismatch
    short_ok: bool | None = None  # may a short last minibatch use the batched step? (checked once)
    # Values do not pick kernels, but BLAS results may depend on the alignment of the operands:
    # the bit-for-bit check against fit's step takes one seed per distinct set of byte offsets
    # (mod 64) of its parameter slices, and the last seed.
    rows = _alignment_rows(params, len(seeds))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    n = X.shape[0]
    history: list[list[float]] = [[] for _ in seeds]
    checked = False
    for _ in range(epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
        totals = torch.zeros(len(seeds), dtype=torch.float64)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            if idx.shape[1] == batch_size:
                while not checked:  # the batched step must reproduce the single-seed step bit for bit
                    if mode == "bmm":
                        grads, loss = fast(params, X[idx], y[idx])
                        ref, _ = _per_seed_autograd(models[0], loss_fn, params, X, y, idx, rows)
                    else:
                        grads, loss = step(params, buffers, X[idx], y[idx])
                        ref, _ = _per_seed(single, params, buffers, X, y, idx, rows)
                    if all(torch.equal(grads[k][rows], ref[k]) for k in params):
                        checked = True
                    elif mode == "bmm":
                        mode = "vmap"
                    else:
                        return loop("gets other floating-point results under vmap (batched kernels)")
                else:
                    grads, loss = fast(params, X[idx], y[idx]) if mode == "bmm" else step(params, buffers, X[idx], y[idx])
            elif mode == "bmm" and short_ok is not False:
                # a short last batch: other shapes may pick other kernels, so it is checked once too
                grads, loss = fast(params, X[idx], y[idx])
                if short_ok is None:
                    ref, _ = _per_seed_autograd(models[0], loss_fn, params, X, y, idx, rows)
                    short_ok = all(torch.equal(grads[k][rows], ref[k]) for k in params)
                    if not short_ok:
                        grads, loss = _per_seed_autograd(models[0], loss_fn, params, X, y, idx)
            else:  # vmap picks other matmul kernels on a short last batch (not bit-equal): loop
                grads, loss = _per_seed(single, params, buffers, X, y, idx)
            if not bool(torch.isfinite(loss).all()):
                bad = [seeds[i] for i in torch.nonzero(~torch.isfinite(loss)).flatten().tolist()]
                raise TrainingDiverged(f"ensemble.train: the training loss must stay finite; got "
                                       f"non-finite loss for seeds {bad} (lr = {lr:g}); use a smaller lr.")
            with torch.no_grad():  # fit's update, p.sub_(g, alpha=lr), for all tensors in one call
                torch._foreach_sub_(list(params.values()), [grads[k] for k in params], alpha=lr)
            totals += loss.detach().double().cpu() * idx.shape[1]
        for i in range(len(seeds)):
            history[i].append(float(totals[i]) / n)
    with torch.no_grad():
        for i, m in enumerate(models):
            for k, p in m.named_parameters():
                p.copy_(params[k][i])
    return EnsembleResult(tuple(seeds), tuple(models), tuple(tuple(h) for h in history), vectorised=True)


def __getattr__(name: str) -> Any:  # the sweep (pydantic, the runner) loads on first use
    if name in ("SweepConfig", "load_sweep_config", "run_sweep"):
        from permsym.ensemble import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'permsym.ensemble' has no attribute {name!r}")
