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
recompute them from $x$ alone. Each map comes three ways: ``value`` (works under plain
autograd: out of place when ``x`` requires grad, in place on fresh temporaries otherwise),
``derivative`` (out of place, no autograd; also traced by ``torch.compile``) and ``fill``,
which writes $s(x)$ and optionally $s'(x)$ into caller-owned panel buffers with ``out=``
and in-place ops only (the eager fused passes allocate nothing per panel).
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


Fill = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, "torch.Tensor | None"]]
Traced = Callable[[torch.Tensor, bool], tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass(frozen=True)
class DomainMap:
    """A map $s$ with its derivative; ``derivative is None`` means $s' = 1$.

    ``fill(x, t, d)`` writes $s(x)$ into ``t`` and, when ``d`` is given, $s'(x)$ into ``d``
    (``x``, ``t``, ``d`` of one shape, ``x`` untouched); it returns the tensors holding them,
    which for the identity map are ``x`` itself and ``None``. ``traced(x, need_d)`` gives
    ``(s(x), s'(x) or None)`` in out-of-place ops for ``torch.compile`` (``None`` here: the
    value and derivative functions themselves).
    """

    name: str
    value: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor] | None
    odd: bool
    fill: Fill
    traced_form: Traced | None = None

    def traced(self, x: torch.Tensor, need_d: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.traced_form is not None:
            return self.traced_form(x, need_d)
        d = self.derivative(x) if need_d and self.derivative is not None else None
        return self.value(x), d


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


def _identity_fill(x, t, d):
    return x, None


def _tanh_fill(x, t, d):
    torch.tanh(x, out=t)
    if d is not None:
        torch.mul(t, t, out=d).neg_().add_(1.0)
    return t, d


def _softplus_fill(x, t, d):
    t.copy_(F.softplus(x))
    if d is not None:
        torch.sigmoid(x, out=d)
    return t, d


def _gauss_density_fill(x, d, scale):
    torch.mul(x, x, out=d).mul_(-0.5).exp_().mul_(scale)


def _erf_fill(x, t, d):
    torch.mul(x, _INV_SQRT2, out=t).erf_()
    if d is not None:
        _gauss_density_fill(x, d, _SQRT_2_OVER_PI)
    return t, d


def _arcsine_fill(x, t, d):
    torch.mul(x, _INV_SQRT2, out=t).erf_().mul_(0.5 * math.pi)  # u; t = sin(u), s' ~ cos(u)
    if d is not None:
        _gauss_density_fill(x, d, 0.5 * math.pi * _SQRT_2_OVER_PI)
        d.mul_(torch.cos(t))
    return t.sin_(), d


def _exponential_fill(x, t, d):
    torch.neg(x, out=t)
    torch.special.log_ndtr(t, out=t).neg_()  # -log Phi(-x)
    if d is not None:  # phi(x) / Phi(-x) = exp(-x^2/2 - log sqrt(2 pi) + t)
        torch.mul(x, x, out=d).mul_(-0.5).add_(t).sub_(_LOG_SQRT_2PI).exp_()
    return t, d


def half_pi_coefficients(kind: str, single: bool) -> list[float]:
    r"""Taylor coefficients, in powers of $e^2$, of $\sin(\tfrac{\pi}{2} e) / e$
    (``kind="sin"``) or $\cos(\tfrac{\pi}{2} e)$ for $|e| \le 1$, cut where the next term
    is below the dtype's rounding ($(\pi/2)^{15}/15! < 10^{-9}$ for single precision,
    $(\pi/2)^{25}/25! < 10^{-20}$ for double)."""
    terms = 7 if single else 12
    odd = kind == "sin"
    powers = [2 * k + (1 if odd else 0) for k in range(terms + (0 if odd else 1))]
    return [(-1) ** k * (0.5 * math.pi) ** p / math.factorial(p) for k, p in enumerate(powers)]


def _half_pi_series(e: torch.Tensor, kind: str) -> torch.Tensor:
    r"""$\sin(\tfrac{\pi}{2} e)$ or $\cos(\tfrac{\pi}{2} e)$ for $|e| \le 1$ by
    :func:`half_pi_coefficients` in Horner form: a few fused multiply-adds where a
    vectorised sin/cos needs a range reduction."""
    cs = half_pi_coefficients(kind, e.dtype in (torch.float32, torch.float16, torch.bfloat16))
    e2 = e * e
    acc = e2 * cs[-1] + cs[-2]
    for c in reversed(cs[:-2]):
        acc = acc * e2 + c
    return acc * e if kind == "sin" else acc


def _arcsine_traced(x: torch.Tensor, need_d: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    e = torch.erf(x * _INV_SQRT2)
    t = _half_pi_series(e, "sin")
    if not need_d:
        return t, None
    density = torch.exp(x * x * -0.5) * (0.5 * math.pi * _SQRT_2_OVER_PI)
    return t, _half_pi_series(e, "cos") * density


MAPS: dict[str, DomainMap] = {
    "identity": DomainMap("identity", lambda x: x, None, True, _identity_fill),
    "tanh": DomainMap("tanh", torch.tanh, _tanh_derivative, True, _tanh_fill),
    "softplus": DomainMap("softplus", F.softplus, torch.sigmoid, False, _softplus_fill),
    "erf": DomainMap("erf", _erf_value, _erf_derivative, True, _erf_fill),
    "arcsine": DomainMap("arcsine", _arcsine_value, _arcsine_derivative, True, _arcsine_fill, _arcsine_traced),
    "exponential": DomainMap("exponential", _exponential_value, _exponential_derivative, False, _exponential_fill),
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
