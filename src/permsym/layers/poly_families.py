r"""Orthonormal polynomial families as three-term recurrences (DESIGN.md 2.6).

Every family is orthonormal for the *probability* measure $w(t)\,dt / \int w$ on its domain,
so $p_0 = 1$ and, for $t \sim w$, $E[p_m(t) p_n(t)] = \delta_{mn}$. The polynomials obey

$$c_{n+1}\, p_{n+1}(t) = (t - b_n)\, p_n(t) - c_n\, p_{n-1}(t), \qquad p_{-1} = 0,$$

with $b_n$ the diagonal and $c_n = \sqrt{\beta_n}$ the off-diagonal of the Jacobi matrix.

| family | weight $w(t)$ | domain | $b_n$ | $c_n^2$ |
|---|---|---|---|---|
| legendre | 1 | $[-1, 1]$ | 0 | $n^2 / (4n^2 - 1)$ |
| chebyshev | $(1 - t^2)^{-1/2}$ | $[-1, 1]$ | 0 | $1/2$ ($n = 1$), $1/4$ |
| chebyshev2 | $(1 - t^2)^{1/2}$ | $[-1, 1]$ | 0 | $1/4$ |
| hermite | $e^{-t^2/2}$ | $\mathbb{R}$ | 0 | $n$ |
| laguerre | $t^{\alpha} e^{-t}$ | $[0, \infty)$ | $2n + \alpha + 1$ | $n (n + \alpha)$ |
| jacobi | $(1 - t)^{\alpha} (1 + t)^{\beta}$ | $[-1, 1]$ | see :func:`jacobi_recurrence` | |
| gegenbauer | $(1 - t^2)^{\alpha - 1/2}$ | $[-1, 1]$ | Jacobi with $\alpha = \beta = \alpha_G - 1/2$ | |

References:
    W. Gautschi, *Orthogonal Polynomials: Computation and Approximation*, OUP 2004, Table 1.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_DEGREE = 64
"""Largest degree accepted by :class:`~permsym.layers.OrthoPoly` and ``poly_basis``."""


@dataclass(frozen=True)
class Family:
    """One orthonormal family: its recurrence, parameters and the domain maps it accepts.

    Attributes:
        name: the name used in ``act=<name><degree>``.
        recurrence: ``(degree, **params) -> (b, c)`` with ``b[n]`` for ``n = 0..degree`` and
            ``c[n]`` for ``n = 0..degree+1`` (``c[0] = 0``), float64.
        params: defaults of the shape parameters (``alpha``, ``beta``).
        domain: the support ``(low, high)`` of the weight.
        maps: the domain maps this family accepts, default first (see ``poly_maps``).
        symmetric: ``b_n = 0`` for all parameters, so ``p_n(-t) = (-1)^n p_n(t)``.
    """

    name: str
    recurrence: Callable[..., tuple[np.ndarray, np.ndarray]]
    params: dict[str, float] = field(default_factory=dict)
    domain: tuple[float, float] = (-1.0, 1.0)
    maps: tuple[str, ...] = ("tanh",)
    symmetric: bool = True

    def resolve_params(self, call: str, given: dict[str, Any]) -> dict[str, float]:
        """Defaults updated with ``given``; raise on unknown names or values off the domain."""
        aliases = {"lambda": "alpha", "lam": "alpha"} if self.name == "gegenbauer" else {}
        out = dict(self.params)
        for key, value in given.items():
            name = aliases.get(key, key)
            if name not in out:
                accepted = ", ".join(self.params) or "none"
                raise TypeError(
                    f"{call}: family parameters of {self.name} must be among {accepted}; "
                    f"got {key!r}."
                )
            out[name] = float(value)
        lower = -0.5 if self.name == "gegenbauer" else -1.0
        for name, value in out.items():
            if not value > lower:
                raise ValueError(f"{call}: {name} must be > {lower:g}; got {value!r}.")
        return out


def legendre_recurrence(degree: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.arange(degree + 2, dtype=np.float64)
    c = np.sqrt(n**2 / (4 * n**2 - 1))
    return np.zeros(degree + 1), c


def chebyshev_recurrence(degree: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.full(degree + 2, 0.5)
    c[0] = 0.0
    if degree + 2 > 1:
        c[1] = math.sqrt(0.5)
    return np.zeros(degree + 1), c


def chebyshev2_recurrence(degree: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.full(degree + 2, 0.5)
    c[0] = 0.0
    return np.zeros(degree + 1), c


def hermite_recurrence(degree: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(degree + 1), np.sqrt(np.arange(degree + 2, dtype=np.float64))


def laguerre_recurrence(degree: int, alpha: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    n = np.arange(degree + 2, dtype=np.float64)
    return (2 * n + alpha + 1)[: degree + 1], np.sqrt(n * (n + alpha))


def jacobi_recurrence(degree: int, alpha: float = 1.0, beta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    r"""Jacobi recurrence for weight $(1-t)^\alpha (1+t)^\beta$, $\alpha, \beta > -1$.

    $b_n = (\beta^2 - \alpha^2) / ((2n + s)(2n + s + 2))$ with $s = \alpha + \beta$
    ($b_0 = (\beta - \alpha)/(s + 2)$), and
    $c_n^2 = 4n(n+\alpha)(n+\beta)(n+s) / ((2n+s)^2 (2n+s+1)(2n+s-1))$
    ($c_1^2 = 4(1+\alpha)(1+\beta) / ((2+s)^2 (3+s))$, the removable case $s = -1$).
    """
    a, b = alpha, beta
    s = a + b
    diag = np.empty(degree + 1)
    off = np.zeros(degree + 2)
    for n in range(degree + 1):
        if n == 0:
            diag[n] = (b - a) / (s + 2)
        else:
            diag[n] = (b * b - a * a) / ((2 * n + s) * (2 * n + s + 2))
    for n in range(1, degree + 2):
        if n == 1:
            off[n] = math.sqrt(4 * (1 + a) * (1 + b) / ((2 + s) ** 2 * (3 + s)))
        else:
            num = 4 * n * (n + a) * (n + b) * (n + s)
            den = (2 * n + s) ** 2 * (2 * n + s + 1) * (2 * n + s - 1)
            off[n] = math.sqrt(num / den)
    return diag, off


def gegenbauer_recurrence(degree: int, alpha: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    return jacobi_recurrence(degree, alpha - 0.5, alpha - 0.5)


_CHEBYSHEV = Family("chebyshev", chebyshev_recurrence, maps=("gauss", "tanh"))

FAMILIES: dict[str, Family] = {
    "legendre": Family("legendre", legendre_recurrence, maps=("gauss", "tanh")),
    "chebyshev": _CHEBYSHEV,
    "chebyshev1": _CHEBYSHEV,
    "chebyshev2": Family("chebyshev2", chebyshev2_recurrence),
    "hermite": Family("hermite", hermite_recurrence, domain=(-math.inf, math.inf), maps=("gauss", "identity")),
    "laguerre": Family(
        "laguerre",
        laguerre_recurrence,
        params={"alpha": 0.0},
        domain=(0.0, math.inf),
        maps=("gauss", "softplus"),
        symmetric=False,
    ),
    "jacobi": Family("jacobi", jacobi_recurrence, params={"alpha": 1.0, "beta": 1.0}, symmetric=False),
    "gegenbauer": Family("gegenbauer", gegenbauer_recurrence, params={"alpha": 1.5}),
}
"""Family name -> :class:`Family`. ``chebyshev1`` is an alias of ``chebyshev`` (first kind)."""


def derivative_matrix(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    r"""$D$ with $p_n'(t) = \sum_{k<n} D_{nk}\, p_k(t)$, exact, from the recurrence alone.

    Differentiating $c_{n+1} p_{n+1} = (t - b_n) p_n - c_n p_{n-1}$ gives
    $c_{n+1} p_{n+1}' = (t - b_n) p_n' + p_n - c_n p_{n-1}'$; multiplication by $t$ acts on
    coefficient vectors as the (symmetric, tridiagonal) Jacobi matrix $J$.
    """
    size = len(b)
    jac = np.diag(b) + np.diag(c[1:size], 1) + np.diag(c[1:size], -1)
    d = np.zeros((size, size))
    for n in range(size - 1):
        row = d[n] @ jac - b[n] * d[n] - (c[n] * d[n - 1] if n else 0.0)
        row[n] += 1.0
        d[n + 1] = row / c[n + 1]
    return d
