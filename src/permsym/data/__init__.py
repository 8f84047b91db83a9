"""Data specs -> ``(X, y)``, the task they pose, and the loss every tool uses for it.

Regression targets have shape ``(n, out)`` and use ``mse_loss`` (mean over all entries);
classification labels are int64 of shape ``(n,)`` and use ``cross_entropy`` (mean). Both
reductions are means, so the full-batch loss is the average of per-sample losses and
curvature, noise and equilibrium tools agree on $H$ and $C$.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from permsym._errors import PermsymError
from permsym.data.generators import generate
from permsym.data.specs import KINDS, DataSpec, parse_spec, task_of

__all__ = [
    "KINDS",
    "DataSpec",
    "Dataset",
    "check_fits",
    "load",
    "load_dataset",
    "loss_fn_for",
    "parse_spec",
    "task_of",
    "train_test_split",
]


@dataclass(frozen=True)
class Dataset:
    """Features ``X``, targets ``y`` and the ``task`` (regression or classification)."""

    X: torch.Tensor
    y: torch.Tensor
    task: str

    def __len__(self) -> int:
        return int(self.X.shape[0])


def load(spec: str, *, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``(X, y)`` for a data spec; features (and regression targets) in ``dtype``.

    Examples:
        >>> X, y = load("linear:n=16,d=3")
        >>> X.shape, y.shape, X.dtype
        (torch.Size([16, 3]), torch.Size([16, 1]), torch.float32)
    """
    ds = load_dataset(spec, dtype=dtype)
    return ds.X, ds.y


def load_dataset(spec: str, *, dtype: torch.dtype = torch.float32) -> Dataset:
    """Load a spec as a :class:`Dataset` (draws are made in float64, then cast)."""
    parsed = parse_spec(spec)
    X, y = generate(parsed)
    X = X.to(dtype)
    if parsed.task == "regression":
        y = y.to(dtype)
    return Dataset(X=X, y=y, task=parsed.task)


def loss_fn_for(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``F.mse_loss`` for ``"regression"``, ``F.cross_entropy`` for ``"classification"`` (mean)."""
    if task == "regression":
        return F.mse_loss
    if task == "classification":
        return F.cross_entropy
    raise ValueError(f"loss_fn_for: task must be 'regression' or 'classification'; got {task!r}.")


def train_test_split(
    X: torch.Tensor, y: torch.Tensor, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split by a permutation drawn from a private generator: same seed, same split.

    Examples:
        >>> X, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
        >>> (Xtr, ytr), (Xte, yte) = train_test_split(X, y, test_fraction=0.3)
        >>> len(Xtr), len(Xte)
        (7, 3)
    """
    n = X.shape[0]
    if not 0 < test_fraction < 1:
        raise ValueError(f"train_test_split: test_fraction must be in (0, 1); got {test_fraction!r}.")
    n_test = round(n * test_fraction)
    if n_test < 1 or n_test >= n:
        raise ValueError(
            f"train_test_split: test_fraction * n must leave both parts non-empty; got "
            f"{test_fraction} * {n}."
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return (X[train], y[train]), (X[test], y[test])


def check_fits(model: nn.Module, X: torch.Tensor, y: torch.Tensor, task: str, *, call: str = "", spec: str = "data") -> None:
    """Raise :class:`PermsymError` if ``model`` cannot take ``X`` or its outputs do not fit ``y``."""
    arch = getattr(model, "permsym_arch", type(model).__name__)
    call = f"{call}: " if call else ""
    probe = X[:2].to(next(model.parameters()).dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except RuntimeError:
        raise PermsymError(
            f"{call}data {spec!r} has {tuple(X.shape[1:])} features per sample; model {arch!r} "
            f"cannot take them (check the input size of the architecture)."
        ) from None
    finally:
        model.train(was_training)
    if task == "regression":
        if y.ndim != 2 or tuple(out.shape[1:]) != tuple(y.shape[1:]):
            raise PermsymError(
                f"{call}model output must match the targets of {spec!r}; got output shape "
                f"{tuple(out.shape[1:])} per sample for {arch!r} and targets {tuple(y.shape[1:])}."
            )
    else:
        classes = int(y.max()) + 1
        if out.ndim != 2 or out.shape[1] < classes:
            raise PermsymError(
                f"{call}model outputs must be at least the {classes} classes of {spec!r}; "
                f"got {tuple(out.shape[1:])} for {arch!r}."
            )
