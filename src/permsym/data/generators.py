"""Generators behind the data specs: every draw comes from a private ``torch.Generator``."""

from __future__ import annotations

import math

import torch

from permsym._errors import PermsymError
from permsym.data.specs import DataSpec

__all__ = ["generate"]


def _synthetic_regression(n: int, d: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$x \sim N(0, I_d)$, $y = \sin(x^\top u) + \tfrac12 \tanh(x^\top v) + \sigma \epsilon$ (shape (n, 1))."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    u = torch.randn(d, generator=g, dtype=torch.float64) / math.sqrt(d)
    v = torch.randn(d, generator=g, dtype=torch.float64) / math.sqrt(d)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.sin(X @ u) + 0.5 * torch.tanh(X @ v) + noise * eps
    return X, y.unsqueeze(1)


def _linear(n: int, d: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$x = z \odot s$ with $z \sim N(0, I_d)$ and scales $s$ from 1 down to 0.3 (so the Hessian's
    eigenvalues are spread), $y = x^\top w + 0.5 + \sigma \epsilon$ with $w \sim N(0, I_d)$."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0.0, math.log10(0.3), d, dtype=torch.float64) if d > 1 else torch.ones(1, dtype=torch.float64)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    w = torch.randn(d, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    y = X @ w + 0.5 + noise * eps
    return X, y.unsqueeze(1)


def _teacher(arch: str, n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from permsym.archs import build, parse

    try:
        parsed = parse(arch)
    except (PermsymError, ValueError) as exc:
        raise PermsymError(f"data: teacher architecture {arch!r} is not valid: {exc}") from None
    in_features = math.prod(parsed.dims[0])
    model = build(arch, seed=seed).to(torch.float64).eval()
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = model(X)
    eps = torch.randn(out.shape, generator=g, dtype=torch.float64)
    return X, out + noise * eps


def _digits(n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = torch.as_tensor(bunch.data, dtype=torch.float64) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    if n is not None:
        if n > X.shape[0]:
            raise PermsymError(f"data: digits n must be at most {X.shape[0]}; got {n}.")
        idx = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        X, y = X[idx], y[idx]
    return X, y


def generate(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``(X, y)`` in float64 (labels: int64) for a parsed spec."""
    o = spec.options
    if spec.kind == "synthetic-regression":
        return _synthetic_regression(o["n"], o["d"], o["noise"], o["seed"])
    if spec.kind == "linear":
        return _linear(o["n"], o["d"], o["noise"], o["seed"])
    if spec.kind == "teacher":
        assert spec.arch is not None
        return _teacher(spec.arch, o["n"], o["noise"], o["seed"])
    if spec.kind == "digits":
        return _digits(o["n"], o["seed"])
    raise PermsymError(f"data: no generator for {spec.kind!r}.")  # pragma: no cover
