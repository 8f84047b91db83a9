"""Comparison helpers that fail with the measured error in the message."""

from __future__ import annotations

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|a - e| / max(max|e|, tiny)."""
    actual, expected = actual.detach(), expected.detach()
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return float(((actual - expected).abs().max() / scale).detach())


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "") -> None:
    err = relative_error(actual, expected)
    assert err < rtol, f"{what} relative error {err:.3e} exceeds {rtol:.1e}"
