r"""Domain maps $s$ from pre-activations $x \in \mathbb{R}$ into a family's domain.

Two kinds, chosen with ``OrthoPoly(..., domain=...)``:

* ``"gauss"``: the quantile map $s = F_w^{-1}(\Phi(x))$, with $\Phi$ the normal CDF and
  $F_w$ the CDF of the family's (normalised) weight. For $x \sim N(0, 1)$, $s(x) \sim w$
  exactly, so the composed basis $p_n(s(x))$ is exactly orthonormal for $N(0,1)$
  pre-activations. Closed forms exist for:

  - hermite: $s(x) = x$;
  - legendre (uniform weight): $s(x) = 2\Phi(x) - 1 = \operatorname{erf}(x/\sqrt2)$;
  - chebyshev (arcsine weight): $s(x) = \sin(\tfrac{\pi}{2}\operatorname{erf}(x/\sqrt2))$;
  - laguerre, $\alpha = 0$ (exponential weight): $s(x) = -\log(1 - \Phi(x)) = -\log\Phi(-x)$.

* classic squashing maps: ``"tanh"`` ($s = \tanh x$, into $(-1, 1)$), ``"softplus"``
  ($s = \log(1 + e^x)$, into $(0, \infty)$) and ``"identity"``.

Every map and its derivative $s'(x)$ are finite for every finite $x$ (no clamps, no
$\arccos$ at $\pm 1$); derivatives are written in closed form so the fused backward can
recompute them from $x$ alone. Values work under plain autograd (out of place when ``x``
requires grad, in place on fresh temporaries otherwise); derivatives are used only inside
the fused backward and work in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class DomainMap:
    """A map $s$ with its derivative; ``derivative is None`` means $s' = 1$."""

    name: str
    value: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor] | None
    odd: bool


def _fresh(x: torch.Tensor) -> bool:
    """True when in-place ops on tensors derived from ``x`` need no autograd record."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def _erf_value(x: torch.Tensor) -> torch.Tensor:
    u = x * _INV_SQRT2
    return u.erf_() if _fresh(x) else torch.erf(u)


def _gauss_density_times(x: torch.Tensor, scale: float) -> torch.Tensor:
    """$\\text{scale} \\cdot e^{-x^2/2}$ in a fresh tensor (in place; backward only)."""
    return torch.mul(x, x).mul_(-0.5).exp_().mul_(scale)


def _erf_derivative(x: torch.Tensor) -> torch.Tensor:
    return _gauss_density_times(x, _SQRT_2_OVER_PI)


def _arcsine_value(x: torch.Tensor) -> torch.Tensor:
    u = _erf_value(x)
    return u.mul_(0.5 * math.pi).sin_() if _fresh(x) else torch.sin(u * (0.5 * math.pi))


def _arcsine_derivative(x: torch.Tensor) -> torch.Tensor:
    out = torch.mul(x, _INV_SQRT2).erf_().mul_(0.5 * math.pi).cos_()
    return out.mul_(_gauss_density_times(x, 0.5 * math.pi * _SQRT_2_OVER_PI))


def _exponential_value(x: torch.Tensor) -> torch.Tensor:
    u = torch.special.log_ndtr(-x)
    return u.neg_() if _fresh(x) else -u


def _exponential_derivative(x: torch.Tensor) -> torch.Tensor:
    # phi(x) / Phi(-x) = exp(-x^2/2 - log sqrt(2 pi) - log Phi(-x)), finite for all x.
    log_tail = torch.special.log_ndtr(torch.neg(x))
    return torch.mul(x, x).mul_(-0.5).sub_(log_tail).sub_(_LOG_SQRT_2PI).exp_()


def _tanh_derivative(x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(x)
    return t.mul_(t).neg_().add_(1.0)


MAPS: dict[str, DomainMap] = {
    "identity": DomainMap("identity", lambda x: x, None, odd=True),
    "tanh": DomainMap("tanh", torch.tanh, _tanh_derivative, odd=True),
    "softplus": DomainMap("softplus", F.softplus, torch.sigmoid, odd=False),
    "erf": DomainMap("erf", _erf_value, _erf_derivative, odd=True),
    "arcsine": DomainMap("arcsine", _arcsine_value, _arcsine_derivative, odd=True),
    "exponential": DomainMap("exponential", _exponential_value, _exponential_derivative, odd=False),
}
"""Concrete maps by name; users choose ``gauss|tanh|softplus|identity`` (see :func:`resolve_map`)."""

_GAUSS = {"hermite": "identity", "legendre": "erf", "chebyshev": "arcsine", "laguerre": "exponential"}


def resolve_map(call: str, family: str, allowed: tuple[str, ...], domain: str | None, params: dict[str, float]) -> tuple[DomainMap, bool]:
    """The concrete map for ``domain`` (``None``: the family's default) and whether it is exact.

    Exact means the composed basis is orthonormal for $N(0, 1)$ pre-activations.
    """
    if domain is None:
        domain = allowed[0]
        if family == "laguerre" and params.get("alpha", 0.0) != 0.0:
            domain = "softplus"
    if domain not in allowed:
        raise ValueError(f"{call}: domain must be one of {', '.join(allowed)}; got {domain!r}.")
    if domain == "gauss":
        if family == "laguerre" and params.get("alpha", 0.0) != 0.0:
            raise ValueError(
                f"{call}: domain 'gauss' needs laguerre alpha = 0 (no closed-form gamma "
                f"quantile); got alpha={params['alpha']!r}. Use domain='softplus'."
            )
        return MAPS[_GAUSS[family]], True
    return MAPS[domain], family == "hermite" and domain == "identity"
