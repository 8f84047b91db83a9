"""Symmetry-breaking binary masks (the paper's forced pre-pruning, DESIGN.md 2.1)."""

from __future__ import annotations

import itertools

import torch

from permsym._errors import PermsymError, check_positive_int, check_probability

_MAX_ROUNDS = 200


def _max_distinct_rows(in_features: int) -> int | None:
    """2**in - 1 non-empty binary rows exist; None when that is astronomically many."""
    return 2**in_features - 1 if in_features < 63 else None


def distinct_mask(
    out_features: int,
    in_features: int,
    density: float,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A fixed binary mask ``B`` (``out_features x in_features``) that breaks permutation symmetry.

    Entries are Bernoulli(``density``); then rows are redrawn until no row is all zero and no
    two rows are identical, and every all-zero column gets a one in a row where that keeps the
    rows distinct. With distinct incoming rows in every layer, no permutation of a layer's
    units maps the masks onto themselves (inputs fixed): the symmetry group is trivial.

    Raises:
        PermsymError: if ``out_features > 2**in_features - 1`` (not enough distinct rows).

    Examples:
        >>> m = distinct_mask(7, 3, 0.5, generator=torch.Generator().manual_seed(0))
        >>> len({tuple(r) for r in m.tolist()}), bool(m.sum(0).min() > 0)
        (7, True)
    """
    call = f"distinct_mask(out_features={out_features}, in_features={in_features})"
    check_positive_int(call, "out_features", out_features)
    check_positive_int(call, "in_features", in_features)
    density = check_probability(call, "density", density)
    capacity = _max_distinct_rows(in_features)
    if capacity is not None and out_features > capacity:
        raise PermsymError(
            f"{call}: {in_features} inputs allow only 2**{in_features} - 1 = {capacity} distinct "
            f"non-empty rows; got {out_features} units. Use at most {capacity} units or more inputs."
        )
    if density == 1.0 and out_features > 1:
        raise PermsymError(
            f"{call}: density 1 makes every row identical; use density < 1 to break the symmetry."
        )
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    mask = _draw_rows(out_features, in_features, density, gen)
    _cover_columns(mask, gen)
    return mask


def _draw_row(in_features: int, density: float, gen: torch.Generator) -> torch.Tensor:
    row = torch.rand(in_features, generator=gen) < density
    if not row.any():
        row[torch.randint(in_features, (1,), generator=gen)] = True
    return row


def _draw_rows(out_features: int, in_features: int, density: float, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(out_features, in_features, generator=gen) < density
    for _ in range(_MAX_ROUNDS):
        bad = _bad_rows(mask)
        if not bad:
            return mask
        for i in bad:
            mask[i] = _draw_row(in_features, density, gen)
    if in_features <= 20:  # dense packing: take unused rows in random order
        return _fill_from_unused(mask, gen)
    raise PermsymError(
        f"distinct_mask(out_features={out_features}, in_features={in_features}): no distinct rows "
        f"after {_MAX_ROUNDS} redraws at density {density}; use a density nearer 0.5."
    )


def _bad_rows(mask: torch.Tensor) -> list[int]:
    """Indices of all-zero rows and of every repeat after a row's first occurrence."""
    seen: set[bytes] = set()
    bad = []
    packed = mask.to(torch.uint8).numpy()
    for i, row in enumerate(packed):
        key = row.tobytes()
        if key in seen or not row.any():
            bad.append(i)
        seen.add(key)
    return bad


def _fill_from_unused(mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    bad = _bad_rows(mask)
    keep = [i for i in range(mask.shape[0]) if i not in set(bad)]
    used = {tuple(mask[i].tolist()) for i in keep}
    unused = [r for r in itertools.product([False, True], repeat=mask.shape[1]) if any(r) and r not in used]
    order = torch.randperm(len(unused), generator=gen)
    for i, j in zip(bad, order.tolist(), strict=False):
        mask[i] = torch.tensor(unused[j])
    return mask


def _cover_columns(mask: torch.Tensor, gen: torch.Generator) -> None:
    """Give each empty column a one, in a row where the rows stay distinct."""
    rows = {bytes(r) for r in mask.to(torch.uint8).numpy()}
    for j in torch.nonzero(~mask.any(0)).flatten().tolist():
        for i in torch.randperm(mask.shape[0], generator=gen).tolist():
            candidate = mask[i].clone()
            candidate[j] = True
            key = bytes(candidate.to(torch.uint8).numpy())
            if key not in rows:
                rows.discard(bytes(mask[i].to(torch.uint8).numpy()))
                rows.add(key)
                mask[i] = candidate
                break
        else:  # every row already has all its ones elsewhere: impossible only in tiny cases
            raise PermsymError(
                f"distinct_mask: input {j} cannot be connected without duplicating a row; "
                f"use more units or a higher density."
            )
