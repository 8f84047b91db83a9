"""Planted problems for the alignment tests: B = pi(A) + noise, float64."""

from __future__ import annotations

import torch
from torch import nn

import permsym
from permsym.symmetry import example_input


def model64(arch: str, seed: int) -> nn.Module:
    model = permsym.build(arch, seed=seed).double()
    model.permsym_arch = arch
    return model


def symmetric_masked_mlp(seed: int = 0) -> nn.Module:
    """mlp:6-8-4 with hand-made masks: fc1 rows come in identical pairs, so pairs may swap."""
    model = model64("mlp:6-8-8-3,density=0.5,mask_seed=0", seed)
    pattern = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 1]],
                           dtype=torch.float64)
    with torch.no_grad():
        model.fc1.mask.copy_(pattern.repeat_interleave(2, dim=0))  # rows 2k and 2k+1 identical
        model.fc2.mask.fill_(1.0)
        model.out.mask.fill_(1.0)
        for layer in (model.fc1, model.fc2, model.out):
            layer.weight.mul_(layer.mask)
    return model


def planted(model: nn.Module, *, noise: float, seed: int):  # type: ignore[no-untyped-def]
    """(structure, perms, B) with B = pi(model) + noise * std(tensor) Gaussian noise (masks exact)."""
    structure = permsym.infer_structure(model, example_input(model))
    gen = torch.Generator().manual_seed(seed)
    perms = permsym.random_permutation(structure, gen)
    other = permsym.apply_permutation(model, structure, perms)
    with torch.no_grad():
        for name, t in other.state_dict().items():
            if t.is_floating_point() and name not in structure.masks and t.numel() > 1:
                t.add_(noise * t.std() * torch.randn(t.shape, generator=gen, dtype=t.dtype))
                if name.replace("weight", "mask") in structure.masks:
                    t.mul_(other.state_dict()[name.replace("weight", "mask")])
    return structure, perms, other


def inverse(perms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The alignment that undoes ``apply_permutation(.., perms)`` (gather convention)."""
    return {g: torch.argsort(p) for g, p in perms.items()}
