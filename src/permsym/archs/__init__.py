"""Architecture strings -> ``nn.Module``.

Grammar (see README): ``mlp:IN-H1-...-OUT[,act=relu][,bias=true][,density=RHO,mask_seed=S]``,
``convnet:CxHxW-C1-...-OUT[,act=..][,pool=max|avg]``, ``resmlp:IN-W-OUT[,blocks=B][,hidden=H]``,
``modular:IN-OUT,modules=M,width=W,...``.
"""

from __future__ import annotations

import torch
from torch import nn

from permsym._errors import PermsymError
from permsym.archs.activations import activation_form, parse_activation
from permsym.archs.families import ResMLP, build_convnet, build_mlp
from permsym.archs.grammar import (
    ArchSpec,
    Option,
    parse_arch,
    parse_bool,
    parse_choice,
    parse_density,
    parse_int,
    parse_nonneg_int,
    stream_seed,
)

__all__ = ["ArchSpec", "FAMILIES", "build", "parse"]

_ACT = Option(parse_activation, "relu", activation_form())
_BIAS = Option(parse_bool, True, "true|false")

FAMILIES: dict[str, dict[str, Option]] = {
    "mlp": {
        "act": _ACT,
        "bias": _BIAS,
        "density": Option(parse_density, 1.0, "a number in (0, 1]"),
        "mask_seed": Option(parse_nonneg_int, 0, "a non-negative integer"),
    },
    "convnet": {"act": _ACT, "bias": _BIAS, "pool": Option(parse_choice("max", "avg"), "max", "max|avg")},
    "resmlp": {
        "act": _ACT,
        "blocks": Option(parse_nonneg_int, 2, "a non-negative integer"),
        "hidden": Option(parse_int, None, "a positive integer (default: the width)"),
    },
}


def _register_modular() -> None:
    try:
        from permsym.layers.modular import MODULAR_OPTIONS
    except ImportError:  # the modular layer is optional until it lands
        return
    FAMILIES["modular"] = MODULAR_OPTIONS


_register_modular()


def parse(arch: str) -> ArchSpec:
    """Parse an architecture string without building it."""
    return parse_arch(arch, FAMILIES)


def build(arch: str, *, seed: int | None = 0) -> nn.Module:
    """Build the model an architecture string describes.

    Initial weights are drawn from a private generator seeded with ``seed`` (the global RNG
    is untouched), so ``build(a, seed=s)`` is reproducible. The string is kept on the model
    as ``model.permsym_arch`` and written into checkpoints.

    Examples:
        >>> model = build("mlp:4-8-2,act=tanh")
        >>> model(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
        >>> model.permsym_arch
        'mlp:4-8-2,act=tanh'
    """
    spec = parse(arch)
    generator = torch.Generator().manual_seed(stream_seed(0 if seed is None else int(seed), "weights"))
    # nn.Linear's constructor draws from the global RNG before we overwrite its weights;
    # fork_rng keeps the caller's global state as it was.
    with torch.random.fork_rng(devices=[]):
        if spec.family == "mlp":
            model = build_mlp(spec, generator)
        elif spec.family == "convnet":
            model = build_convnet(spec, generator)
        elif spec.family == "resmlp":
            model = ResMLP(spec, generator)
        elif spec.family == "modular":
            from permsym.layers.modular import build_modular

            model = build_modular(spec, generator)
        else:  # pragma: no cover - FAMILIES and this switch are edited together
            raise PermsymError(f"no builder for family {spec.family!r}.")
    model.permsym_arch = spec.text
    return model
