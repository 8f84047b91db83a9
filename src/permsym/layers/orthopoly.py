r"""``OrthoPoly``: learnable orthogonal-polynomial activations (DESIGN.md 2.6).

$$f(x) = \sum_{n=0}^{N} a_n\, p_n(s(x)),$$

$p_n$ orthonormal for the family's weight (:mod:`permsym.layers.poly_families`), $s$ a
domain map (:mod:`permsym.layers.poly_maps`), coefficients $a$ shared by the layer or one
row per unit. Evaluated by the three-term recurrence in a fused autograd function
(:mod:`permsym.layers.poly_autograd`) that saves only $x$ and works panel by panel, so
neither its saved nor its working memory grows with $N$; ``compile=True`` swaps the panels
for compiled single-pass kernels (:mod:`permsym.layers.poly_native`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import roots_legendre
from torch import nn

from permsym.layers import poly_native
from permsym.layers.poly_autograd import OrthoPolyFunction, plain_forward, scaled_recurrence
from permsym.layers.poly_families import FAMILIES, MAX_DEGREE, Family, derivative_matrix
from permsym.layers.poly_maps import resolve_map

__all__ = ["FAMILIES", "MAX_DEGREE", "OrthoPoly", "poly_basis"]

INITS = ("variance", "gelu", "tanh", "relu")
_TARGETS = {"gelu": F.gelu, "tanh": torch.tanh, "relu": torch.relu}
_QUAD_NODES = 160  # Gauss-Legendre nodes per half-line for N(0,1) expectations (init only)
_QUAD_SPAN = 12.0
# variance init: a_n ~ decay**(n-1). Bounded domains tolerate 0.25 at depth 20; polynomials
# on unbounded domains amplify tail samples layer after layer, so they start nearly linear.
_DECAY_BOUNDED, _DECAY_UNBOUNDED = 0.25, 0.05


def _family(call: str, family: Any) -> Family:
    if not isinstance(family, str):
        raise TypeError(f"{call}: family must be a string; got {type(family).__name__}.")
    if family not in FAMILIES:
        raise ValueError(f"{call}: family must be one of {', '.join(FAMILIES)}; got {family!r}.")
    return FAMILIES[family]


def _degree(call: str, degree: Any) -> int:
    if isinstance(degree, bool) or not isinstance(degree, int):
        raise TypeError(f"{call}: degree must be an int; got {type(degree).__name__}.")
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"{call}: degree must be in [0, {MAX_DEGREE}]; got {degree}.")
    return degree


def poly_basis(family: str, x: torch.Tensor, degree: int, **family_params: float) -> torch.Tensor:
    r"""Orthonormal basis values $p_0(x), \dots, p_N(x)$ on the family's own domain.

    No domain map is applied. Orthonormal for the normalised weight:
    $\int p_m p_n \, w / \int w = \delta_{mn}$. Plain autograd (the stacked, memory-hungry
    path; :class:`OrthoPoly` uses the fused one).

    Returns:
        A tensor of shape ``x.shape + (degree + 1,)``.

    Examples:
        >>> x = torch.tensor([0.0, 1.0], dtype=torch.float64)
        >>> poly_basis("hermite", x, 2)  # 1, x, (x^2 - 1)/sqrt(2)
        tensor([[ 1.0000,  0.0000, -0.7071],
                [ 1.0000,  1.0000,  0.0000]], dtype=torch.float64)
    """
    call = f"poly_basis({family!r}, degree={degree})"
    fam = _family(call, family)
    _degree(call, degree)
    b, c = fam.recurrence(degree, **fam.resolve_params(call, family_params))
    basis = [torch.ones_like(x)]
    if degree >= 1:
        basis.append((x - b[0]) / c[1])
    for n in range(1, degree):
        basis.append(((x - b[n]) * basis[n] - c[n] * basis[n - 1]) / c[n + 1])
    return torch.stack(basis, dim=-1)


def _normal_rule() -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights for $E_{x \\sim N(0,1)}$ (float64): Gauss-Legendre on $[-12, 0]$ and
    $[0, 12]$ times the density, exact to rounding for integrands smooth on each half
    (the kink of relu sits at 0); the tail beyond 12 has mass $< 10^{-32}$."""
    t, w = roots_legendre(_QUAD_NODES)
    half = 0.5 * _QUAD_SPAN
    nodes = np.concatenate([half * (t - 1), half * (t + 1)])
    weights = np.concatenate([half * w, half * w]) * np.exp(-0.5 * nodes**2) / math.sqrt(2 * math.pi)
    return torch.from_numpy(nodes), torch.from_numpy(weights)


class OrthoPoly(nn.Module):
    r"""Activation $f(x) = \sum_{n=0}^{N} a_n p_n(s(x))$, element-wise.

    Args:
        family: ``legendre``, ``chebyshev`` (``chebyshev1``), ``chebyshev2``, ``hermite``,
            ``laguerre``, ``jacobi`` or ``gegenbauer``.
        degree: $N$, in ``[0, MAX_DEGREE]`` (64).
        num_units: ``None`` for one coefficient vector shared by the layer, else the number
            of units: coefficients ``(num_units, N+1)``, unit axis = input dim 1 (features of
            ``(B, C)``, channels of ``(B, C, H, W)``, as for ``BatchNorm``).
        domain: ``"gauss"`` (exactly orthonormal for $N(0,1)$ pre-activations), ``"tanh"``,
            ``"softplus"`` or ``"identity"``; ``None`` takes the family's default (see
            ``docs/layers.md``).
        init: ``"variance"``: $a_0 = 0$, $a_n \propto \rho^{n-1}$ ($\rho = 1/4$ on bounded
            domains, $1/20$ for hermite and laguerre), scaled so that
            $E[f(x)^2] = a^\top G a = 1$ for $x \sim N(0,1)$, with $G = I$ for exact maps
            (orthonormality) and $G$ by quadrature otherwise; ``"gelu"``, ``"tanh"``,
            ``"relu"``: least-squares projection of that activation onto the basis in
            $L^2(N(0,1))$ (for exact maps: $a_n = E[g(x) p_n(s(x))]$), by Gauss quadrature.
        compile: run compiled kernels: on the CPU single-pass C++ kernels built with
            ``torch.compile``'s toolchain (:mod:`permsym.layers.poly_native`; about 2 s per
            kernel the first time, any input shape), elsewhere ``torch.compile``'d sweeps
            (each new input shape compiles again).
        dtype: of the coefficients (default: torch's default dtype).
        **family_params: ``alpha``, ``beta`` (jacobi), ``alpha`` or ``lambda`` (gegenbauer),
            ``alpha`` (laguerre).

    Examples:
        >>> act = OrthoPoly("legendre", 8, num_units=3)
        >>> act(torch.randn(5, 3)).shape, act.coeffs.shape, act.permsym_unit_params
        (torch.Size([5, 3]), torch.Size([3, 9]), {'coeffs': 0})
    """

    permsym_elementwise = True

    def __init__(
        self,
        family: str,
        degree: int,
        *,
        num_units: int | None = None,
        domain: str | None = None,
        init: str = "variance",
        compile: bool = False,
        dtype: torch.dtype | None = None,
        **family_params: float,
    ) -> None:
        super().__init__()
        call = f"OrthoPoly({family!r}, {degree!r})"
        self.family = _family(call, family)
        self.degree = _degree(call, degree)
        if num_units is not None and (
            isinstance(num_units, bool) or not isinstance(num_units, int) or num_units <= 0
        ):
            raise ValueError(f"{call}: num_units must be a positive integer or None; got {num_units!r}.")
        if init not in INITS:
            raise ValueError(f"{call}: init must be one of {', '.join(INITS)}; got {init!r}.")
        self.family_params = self.family.resolve_params(call, family_params)
        self.map, self.exact = resolve_map(call, self.family.name, self.family.maps, domain, self.family_params)
        self.num_units = num_units
        self.compile = bool(compile)
        if self.compile:
            poly_native.vector_isa()  # probe now, not inside a traced forward
        b, c = self.family.recurrence(degree, **self.family_params)
        self._symmetric_recurrence = bool(np.all(b == 0.0))
        self._rec, lam = scaled_recurrence(b, c, self.map.name, num_units is not None)
        dtype = dtype or torch.get_default_dtype()
        # float64 originals; tensors in the coefficients' dtype and device are made on demand
        # (buffers would be rounded for good by a round trip through float32)
        self._constants = {"inv_lam": 1.0 / lam, "dmat": derivative_matrix(b, c)}
        self._cache: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
        coeffs = self._initial_coeffs(init).to(dtype)
        if num_units is not None:
            coeffs = coeffs.expand(num_units, -1).clone()
        self.coeffs = nn.Parameter(coeffs)

    def _constant(self, name: str) -> torch.Tensor:
        key = (name, self.coeffs.dtype, self.coeffs.device)
        if key not in self._cache:
            self._cache[key] = torch.tensor(self._constants[name], dtype=key[1], device=key[2])
        return self._cache[key]

    @property
    def inv_lam(self) -> torch.Tensor:
        r"""$1 / \lambda_n$, the scales of the recurrence (folded into the coefficients)."""
        return self._constant("inv_lam")

    @property
    def dmat(self) -> torch.Tensor:
        r"""The exact derivative matrix $D$, $p_n' = \sum_{k<n} D_{nk} p_k$."""
        return self._constant("dmat")

    def _basis_at(self, x: torch.Tensor) -> torch.Tensor:
        """$p_n(s(x))$ stacked, float64 (used by the initialisers)."""
        return poly_basis(self.family.name, self.map.value(x), self.degree, **self.family_params)

    def _initial_coeffs(self, init: str) -> torch.Tensor:
        nodes, weights = _normal_rule()
        basis = self._basis_at(nodes)  # (Q, N+1)
        if init == "variance":
            bounded = all(math.isfinite(v) for v in self.family.domain)
            decay = _DECAY_BOUNDED if bounded else _DECAY_UNBOUNDED
            powers = [decay ** (n - 1) for n in range(1, self.degree + 1)]
            direction = torch.tensor([0.0, *powers], dtype=torch.float64)
            if self.degree == 0:
                direction[0] = 1.0
            if self.exact:
                gram = torch.eye(self.degree + 1, dtype=torch.float64)
            else:
                gram = basis.T @ (weights[:, None] * basis)
            return direction / torch.sqrt(direction @ gram @ direction)
        target = _TARGETS[init](nodes)
        root = weights.sqrt()
        solution = torch.linalg.lstsq(root[:, None] * basis, root * target, driver="gelsd")
        return solution.solution

    @property
    def permsym_unit_params(self) -> dict[str, int]:
        """Parameters indexed by the unit on the given axis (per-unit coefficients)."""
        return {"coeffs": 0} if self.num_units is not None else {}

    @property
    def permsym_odd(self) -> bool:
        """True when $f(-x) = -f(x)$: odd map, symmetric family, even coefficients zero."""
        if not (self.map.odd and self.family.symmetric and self._symmetric_recurrence):
            return False
        return bool(torch.all(self.coeffs.detach()[..., 0::2] == 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_units is not None and (x.dim() < 2 or x.shape[1] != self.num_units):
            raise ValueError(
                f"OrthoPoly({self.family.name!r}, {self.degree}, num_units={self.num_units}): "
                f"input must have {self.num_units} units on dim 1; got shape {tuple(x.shape)}."
            )
        return _apply(x, self.coeffs, self.inv_lam, self.dmat, self._rec, compiled=self.compile)

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v:g}" for k, v in self.family_params.items())
        units = f", num_units={self.num_units}" if self.num_units is not None else ""
        return f"{self.family.name!r}, {self.degree}{units}, domain={self.map.name}{params}"


def _apply(x, coeffs, inv_lam, dmat, rec, *, compiled=False):
    """The fused function; under ``torch.func`` transforms (``vmap``, ``grad``, ``jvp``),
    which cannot see inside it, the same sum in plain differentiable ops."""
    if torch._C._are_functorch_transforms_active():
        return plain_forward(x, coeffs * inv_lam, rec)
    return OrthoPolyFunction.apply(x.contiguous(), coeffs, inv_lam, dmat, rec, compiled)

