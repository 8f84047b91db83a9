"""``permsym.align``: align one model's units onto a reference model's units."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from permsym._errors import PermsymError
from permsym.alignment._units import (
    Layout,
    check_compatible,
    distance,
    inner,
    layout_of,
    permute_state,
    scored_names,
    unit_cosines,
)
from permsym.alignment.result import AlignmentResult
from permsym.symmetry.structure import Structure

__all__ = ["METHODS", "align", "data_tensor", "structure_of"]

METHODS = ("sort", "sorensen", "weight", "activation")


def data_tensor(data: Any, *, call: str = "align") -> torch.Tensor | None:
    """Inputs from ``data``: a tensor, an ``(X, y)`` pair, or a data spec string (``permsym.data``)."""
    if data is None:
        return None
    if isinstance(data, str):
        from permsym.data import load

        return load(data)[0]
    if isinstance(data, tuple | list) and data and isinstance(data[0], torch.Tensor):
        return data[0]
    if isinstance(data, torch.Tensor):
        return data
    raise TypeError(f"{call}: data must be a tensor, an (X, y) pair or a data spec string; got {type(data).__name__}.")


_TRACED: dict[tuple, Structure] = {}  # structures traced from permsym_arch example inputs (see structure_of)


def _signature(model: nn.Module) -> tuple:
    """What tracing depends on besides the arch string: module types by name, tensor shapes and dtypes."""
    modules = tuple((n, type(m).__qualname__, type(m).__module__) for n, m in model.named_modules())
    tensors = tuple((k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items())
    return (model.permsym_arch, type(model).__qualname__, modules, tensors)


def structure_of(model: nn.Module, x: torch.Tensor | None = None, *, call: str = "align") -> Structure:
    """The model's permutation structure, traced on ``x[:2]`` or on a zero input of its arch.

    Without ``x`` the structure of a model built from a ``permsym_arch`` is remembered (keyed by
    the arch string, the module types by name and every tensor's name, shape and dtype), so
    aligning many models of one architecture traces once. Structures are immutable.
    """
    from permsym.symmetry import example_input, infer_structure

    if x is not None:
        return infer_structure(model, x[:2].to(next(model.parameters()).dtype))
    if getattr(model, "permsym_arch", None) is None:
        raise PermsymError(f"{call}: model has no permsym_arch to build an example input from; pass data=.")
    key = _signature(model)
    hit = _TRACED.get(key)
    if hit is None:
        hit = infer_structure(model, example_input(model))
        if len(_TRACED) >= 32:
            _TRACED.pop(next(iter(_TRACED)))
        _TRACED[key] = hit
    return hit


def _check_models(reference: nn.Module, other: nn.Module, lay: Layout) -> None:
    for name, m in (("reference", reference), ("other", other)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"align: {name} must be an nn.Module; got {type(m).__name__}.")
    check_compatible("align", reference.state_dict(), other.state_dict(), lay.masks)
    arch_a, arch_b = getattr(reference, "permsym_arch", None), getattr(other, "permsym_arch", None)
    if arch_a is not None and arch_b is not None and arch_a != arch_b:
        raise PermsymError(f"align: architectures differ: {arch_a!r} (reference) vs {arch_b!r} (other).")


def align(
    reference: nn.Module,
    other: nn.Module,
    *,
    method: str = "weight",
    data: Any = None,
    structure: Structure | None = None,
    key: str = "out_norm",
    restarts: int = 1,
    max_sweeps: int = 100,
    generator: torch.Generator | None = None,
    init: str = "forward",
) -> AlignmentResult:
    r"""Permute the units of ``other`` to match those of ``reference``; neither is changed.

    Methods: ``"sort"`` (canonical order by ``key``, ranks matched), ``"sorensen"`` (greedy
    Sorensen-Dice matching of connection vectors), ``"weight"`` (Git Re-Basin weight
    matching, coordinate descent over groups, best of ``restarts``), ``"activation"``
    (assignment on activation correlations over ``data``). Every method works from the
    traced :class:`~permsym.symmetry.Structure`, so blocks (Flatten), BatchNorm, residual
    streams and per-unit activation parameters are handled alike; with masks only
    mask-preserving permutations are considered.

    Args:
        reference: the model to align to. other: the model whose units are permuted.
        method: one of ``sort``, ``sorensen``, ``weight``, ``activation``.
        data: inputs for ``activation`` (tensor, ``(X, y)`` or a data spec string).
        structure: the structure of both models (default: traced from ``reference``).
        key: sort key (``out_norm``, ``in_norm``, ``norm``) for ``method="sort"``.
        restarts, max_sweeps, generator, init: weight matching options (sweep orders are
            drawn from ``generator``; ``init="forward"`` starts from a greedy layer-by-layer
            match, ``"identity"`` from the identity as in Algorithm 1).

    Raises:
        ValueError: unknown method, or ``activation`` without data.
        PermsymError: the models differ in architecture, a parameter's shape, or a mask.

    Examples:
        >>> import permsym
        >>> a = permsym.build("mlp:4-6-3", seed=0)
        >>> s = permsym.infer_structure(a, torch.zeros(1, 4))
        >>> b = permsym.apply_permutation(a, s, {"fc1": torch.tensor([5, 4, 3, 2, 1, 0])})
        >>> r = align(a, b, method="weight")
        >>> r.permutations["fc1"].tolist(), round(r.distance_after, 12)
        ([5, 4, 3, 2, 1, 0], 0.0)
    """
    if method not in METHODS:
        raise ValueError(f"align: method must be one of {', '.join(METHODS)}; got {method!r}.")
    x = data_tensor(data)
    if method == "activation" and x is None:
        raise ValueError("align: method 'activation' needs data (inputs to compare activations on); pass data= (CLI: --data SPEC).")
    if structure is None:
        structure = structure_of(reference, x)
    lay = layout_of(structure)
    _check_models(reference, other, lay)
    sa = {k: v.detach() for k, v in reference.state_dict().items()}
    sb = {k: v.detach() for k, v in other.state_dict().items()}
    names = scored_names(sa, lay)
    notes: list[str] = []
    similarity: dict[str, torch.Tensor] | None = None
    history: tuple[float, ...] = ()
    objectives: tuple[float, ...] = ()
    sweeps = 1
    scores: tuple[float, float] | None = None  # (objective, objective at the identity), when known
    if method == "weight":
        from permsym.alignment.weight_matching import match_weights

        wm = match_weights(sa, sb, lay, max_sweeps=max_sweeps, restarts=restarts, generator=generator, init=init)
        perms, history, objectives, sweeps = list(wm.perms), wm.history, wm.objectives, wm.sweeps
        scores = (wm.objective, wm.objective_identity)  # the same float64 inner products
        for gi in wm.fixed_groups:
            notes.append(f"group {structure.groups[gi].name!r}: its masks admit only the identity here; "
                         f"the units stay where they are.")
    elif method == "sort":
        from permsym.alignment.sort import match_by_sort

        perms, notes = match_by_sort(sa, sb, lay, key=key)
    elif method == "sorensen":
        from permsym.alignment.sorensen import match_sorensen

        perms, similarity, notes = match_sorensen(sa, sb, lay)
    else:
        from permsym.alignment.activation_matching import match_activations

        assert x is not None
        perms, similarity = match_activations(reference, other, x, lay, sa, sb)
    aligned_state = permute_state(sb, lay, perms)
    model = copy.deepcopy(other)
    model.load_state_dict(aligned_state)
    # every score below: products in the weights' dtype, sums in float64
    if similarity is None:
        similarity = unit_cosines(sa, aligned_state, lay)
    if scores is None:
        scores = (inner(sa, aligned_state, names), inner(sa, sb, names))
    return AlignmentResult(
        method=method,
        permutations={g.name: p for g, p in zip(structure.groups, perms, strict=True)},
        model=model,
        objective=scores[0],
        objective_identity=scores[1],
        distance_before=distance(sa, sb, names),
        distance_after=distance(sa, aligned_state, names),
        similarity=similarity,
        sweeps=sweeps,
        history=history,
        objectives=objectives,
        notes=tuple(notes),
    )
