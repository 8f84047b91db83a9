r"""Per-sample gradients $g_i = \nabla_\theta \ell(f_\theta(x_i), y_i)$.

Plain MLPs (``nn.Sequential`` of Linear layers and element-wise activations, mean
cross-entropy or squared error) take the outer-product path of :mod:`permsym.noise.outer`;
every other model ``vmap(grad)``, chunked. With mean-reduced losses the full-batch gradient is
$\bar g = \frac1N \sum_i g_i$.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from permsym._threads import limited_threads
from permsym.curvature.functional import FlatLoss, LossFn
from permsym.noise import outer

__all__ = ["iter_per_sample_gradients", "per_sample_gradients"]

# Per-sample gradients held at once when chunk_size is None. Chunks of this size stay below
# glibc's mmap threshold (32 MiB), so their memory is reused instead of page-faulted anew each
# chunk. Measured on a 2-core CPU (MLP 64-256-256-10, 2048 samples, 85k parameters: 98 samples
# per chunk): per_sample_gradients 0.24 s vs 0.32 s in one 2048-sample chunk (two threads);
# gradient_noise 0.17 s vs 0.39 s with 256-sample chunks (one thread). When other jobs load
# the CPU, torch's OpenMP threads wait at every op for a descheduled sibling; then fewer, larger
# chunks (chunk_size=N) or threads=1 are faster.
_CHUNK_BYTES = 32 * 2**20


def _chunk_samples(flat: FlatLoss, chunk_size: int | None) -> int:
    """``chunk_size``, or for ``None`` the number of samples whose gradients fill ``_CHUNK_BYTES``."""
    if chunk_size is not None:
        return int(chunk_size)
    itemsize = torch.empty((), dtype=flat.dtype).element_size()
    return max(1, _CHUNK_BYTES // (flat.num_params * itemsize))


def _single_loss(flat: FlatLoss) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss1(params: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(flat.module, {**params, **flat.buffers}, (x.unsqueeze(0),))
        return flat.loss_fn(out, t.unsqueeze(0))

    return loss1


def _iter_gradient_dicts(flat: FlatLoss, chunk_size: int | None) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(start, {name: (c, *shape)})`` per chunk of ``chunk_size`` samples.

    The gradient is taken with respect to the parameter tensors, not the flat ``theta``: the
    backward of slicing ``theta`` would materialise a zero-padded ``(c, P)`` tensor per
    parameter and add them up, several times the cost of the per-sample gradients themselves.
    """
    per_sample = vmap(grad(_single_loss(flat)), in_dims=(None, 0, 0))
    params = flat.unflatten(flat.theta)
    X, y = flat.X, flat.y
    chunk_size = _chunk_samples(flat, chunk_size)
    for s in range(0, X.shape[0], chunk_size):
        yield s, per_sample(params, X[s : s + chunk_size], y[s : s + chunk_size])


def iter_per_sample_gradients(flat: FlatLoss, *, chunk_size: int | None = None) -> Iterator[torch.Tensor]:
    """Yield ``(c, P)`` blocks of per-sample gradients, ``chunk_size`` samples at a time.

    ``chunk_size=None`` takes as many samples as fit in about 32 MiB of gradients.
    """
    for _, grads in _iter_gradient_dicts(flat, chunk_size):
        c = grads[flat.names[0]].shape[0]
        yield torch.cat([grads[n].reshape(c, -1) for n in flat.names], dim=1).detach()


def per_sample_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``(N, P)`` matrix of per-sample gradients (columns ordered like ``named_parameters()``).

    ``out``: an ``(N, P)`` tensor of the computation's dtype and device to write into and
    return. Reusing it across calls saves allocating the result: on the CPU, fresh memory is
    zero-filled by the kernel page by page, which for large ``N P`` costs more than the
    gradients themselves (0.13 of 0.15 s for a 700 MB result in benchmarks/RESULTS.md).

    Plain MLPs: outer products of layer inputs and output gradients written straight into the
    result (``chunk_size`` unused). Other models: ``vmap(grad)``, ``chunk_size`` samples at a
    time (``None``: about 32 MiB of gradients per chunk).

    Examples:
        >>> import permsym, torch.nn.functional as F
        >>> model = permsym.build("mlp:3-4-1")
        >>> G = per_sample_gradients(model, F.mse_loss, (torch.randn(5, 3), torch.randn(5, 1)))
        >>> G.shape
        torch.Size([5, 21])
    """
    with limited_threads(torch_threads=threads):
        flat = FlatLoss(model, loss_fn, data, dtype=dtype)
        shape = (flat.X.shape[0], flat.num_params)
        if out is None:
            G = torch.empty(shape, dtype=flat.dtype, device=flat.theta.device)
        elif (tuple(out.shape) != shape or out.dtype != flat.dtype or out.device != flat.theta.device
              or not out.is_contiguous()):
            raise ValueError(
                f"per_sample_gradients: out must be a contiguous {shape} {flat.dtype} tensor on {flat.theta.device}; "
                f"got {'a' if out.is_contiguous() else 'a non-contiguous'} {tuple(out.shape)} {out.dtype} on {out.device}."
            )
        else:
            G = out
        if outer.applies(flat):
            outer.write_per_sample_gradients(flat, G)
            return G
        for s, grads in _iter_gradient_dicts(flat, chunk_size):  # written in place: no (N, P) concatenation
            offset = 0
            for name, k in zip(flat.names, flat.numels, strict=True):
                block = grads[name]
                G[s : s + block.shape[0], offset : offset + k] = block.reshape(block.shape[0], k)
                offset += k
        return G
