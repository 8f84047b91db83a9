r"""Error bars for time averages of correlated series (MCMC-style).

The integrated autocorrelation time $\tau = 1 + 2\sum_{k \ge 1}\rho_k$ is summed up to the
smallest window $M \ge c\,\tau(M)$ (Sokal's automatic window, $c = 5$); the effective sample
size of $T$ correlated samples is $T/\tau$ and the standard error of their mean is
$s\sqrt{\tau/T}$.

References:
    Sokal 1997, "Monte Carlo Methods in Statistical Mechanics: Foundations and New Algorithms".
"""

from __future__ import annotations

import math

import torch

__all__ = ["autocorrelation_time", "mean_with_ci"]

Z95 = 1.959963984540054


def autocorrelation_time(x: torch.Tensor, *, c: float = 5.0) -> float:
    """Integrated autocorrelation time of a 1-D series (1 for white noise).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> round(autocorrelation_time(torch.randn(20000, generator=g, dtype=torch.float64)), 1)
        1.0
    """
    x = x.to(torch.float64).reshape(-1)
    n = x.numel()
    if n < 4:
        return 1.0
    d = x - x.mean()
    var = float(d @ d) / n
    if var == 0:
        return 1.0
    size = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(d, n=size)
    acf = torch.fft.irfft(f * f.conj(), n=size)[:n] / (n * var)
    tau = 1.0
    for m in range(1, n):
        tau += 2.0 * float(acf[m])
        if m >= c * tau:
            break
    return max(tau, 1.0)


def mean_with_ci(x: torch.Tensor, *, z: float = Z95) -> tuple[float, float, float, float]:
    """``(mean, ci_low, ci_high, effective sample size)`` of a correlated series (95% by default)."""
    x = x.to(torch.float64).reshape(-1)
    n = x.numel()
    mean = float(x.mean())
    if n < 2:
        return mean, -math.inf, math.inf, float(n)
    tau = autocorrelation_time(x)
    ess = n / tau
    se = float(x.std(correction=0)) / math.sqrt(ess)
    return mean, mean - z * se, mean + z * se, ess
