r"""Stochastic trace estimators on a matrix or matvec.

Hutchinson: $\hat t = \frac1m \sum_j z_j^\top A z_j$, Rademacher $z_j$; standard error
$s / \sqrt m$ from the sample standard deviation $s$ of the $z_j^\top A z_j$.

Hutch++ (Meyer, Musco, Musco, Woodruff 2021): with $m$ products, sketch $Q = \mathrm{orth}(A S)$
($S$: $m/3$ Rademacher columns), take $\mathrm{tr}(Q^\top A Q)$ exactly and Hutchinson with
$m/3$ vectors on the deflated $(I - QQ^\top) A (I - QQ^\top)$; the standard error is that of
the deflated part.

References:
    Hutchinson 1990, Commun. Stat. Simul. Comput. 19(2); Meyer et al. 2021, SOSA, arXiv:2010.09649.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from permsym.curvature.operators import as_matvec, working_device

__all__ = ["METHODS", "trace_estimate"]

METHODS = ("hutchpp", "hutchinson")


def _rademacher(n: int, m: int, generator: torch.Generator | None, device: torch.device | None = None) -> torch.Tensor:
    # drawn on the CPU with the seeded generator, then moved: the same probes on every device
    return torch.randint(0, 2, (n, m), generator=generator).to(device=device, dtype=torch.float64).mul_(2).sub_(1)


def _hutchinson_samples(matvec: Any, Z: torch.Tensor) -> torch.Tensor:
    return torch.stack([Z[:, j] @ matvec(Z[:, j]) for j in range(Z.shape[1])])


def trace_estimate(
    A: Any,
    *,
    num_matvecs: int = 99,
    method: str = "hutchpp",
    size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, float, int]:
    """Estimate $\\mathrm{tr}(A)$; return ``(estimate, stderr, matvecs used)``.

    Probes are drawn on the CPU with ``generator`` and moved to ``device`` (default:
    :func:`~permsym.curvature.operators.working_device`, ``A``'s own device).

    Examples:
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> est, se, m = trace_estimate(A, num_matvecs=30, method="hutchinson",
        ...                             generator=torch.Generator().manual_seed(0))
        >>> est, se  # Rademacher probes are exact on a diagonal matrix
        (5050.0, 0.0)
    """
    if method not in METHODS:
        raise ValueError(f"trace_estimate: method must be one of {', '.join(METHODS)}; got {method!r}.")
    matvec, n = as_matvec(A, size=size)
    dev = working_device(A, device)
    if method == "hutchinson":
        if num_matvecs < 2:
            raise ValueError(f"trace_estimate: num_matvecs must be at least 2 for Hutchinson; got {num_matvecs}.")
        samples = _hutchinson_samples(matvec, _rademacher(n, num_matvecs, generator, dev))
        return float(samples.mean()), float(samples.std() / math.sqrt(num_matvecs)), num_matvecs
    if num_matvecs < 6:
        raise ValueError(f"trace_estimate: num_matvecs must be at least 6 for Hutch++; got {num_matvecs}.")
    s = num_matvecs // 3
    S = _rademacher(n, s, generator, dev)
    Y = torch.stack([matvec(S[:, j]) for j in range(s)], dim=1)
    Q, _ = torch.linalg.qr(Y)
    AQ = torch.stack([matvec(Q[:, j]) for j in range(Q.shape[1])], dim=1)
    exact = float(torch.trace(Q.T @ AQ))
    g = num_matvecs - 2 * s
    G = _rademacher(n, g, generator, dev)
    G = G - Q @ (Q.T @ G)

    def deflated(v: torch.Tensor) -> torch.Tensor:
        w = matvec(v)
        return w - Q @ (Q.T @ w)

    samples = _hutchinson_samples(deflated, G)
    stderr = float(samples.std() / math.sqrt(g)) if g > 1 else float("nan")
    return exact + float(samples.mean()), stderr, 2 * s + g
