"""Thread-pool control while torch runs.

On a machine with few cores, torch's OpenMP threads and an idle BLAS pool (scipy/numpy's
OpenBLAS) compete for the same cores; capping BLAS threads while torch computes was measured
3x faster on a 2-core CPU. :func:`limited_threads` does both inside one ``with`` block and
restores the previous settings on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["limited_threads"]


@contextlib.contextmanager
def limited_threads(*, torch_threads: int | None = None, blas_threads: int | None = 1) -> Iterator[None]:
    """Run a block with ``torch_threads`` torch threads and ``blas_threads`` BLAS threads.

    Args:
        torch_threads: intra-op threads for torch inside the block (``None``: unchanged).
        blas_threads: threads for the BLAS libraries numpy/scipy load (``None``: unchanged).

    Examples:
        >>> with limited_threads(torch_threads=1):
        ...     torch.get_num_threads()
        1
    """
    previous = torch.get_num_threads()
    limiter: contextlib.AbstractContextManager = contextlib.nullcontext()
    if blas_threads is not None:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=blas_threads, user_api="blas")
    try:
        if torch_threads is not None:
            torch.set_num_threads(int(torch_threads))
        with limiter:
            yield
    finally:
        torch.set_num_threads(previous)
