"""What a permutation symmetry moves: groups of units and the tensor axes they index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Member:
    """One tensor axis moved by a group: ``state_dict()[name]`` along ``axis``.

    Unit ``u`` owns the ``block`` consecutive entries ``u*block ... u*block + block - 1``
    along the axis (``block > 1`` after a Flatten: one channel is H*W features).
    """

    name: str
    axis: int
    block: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "axis": self.axis, "block": self.block}


@dataclass(frozen=True)
class Group:
    """Hidden units that may be permuted together without changing the function.

    ``odd`` is True when every non-linearity these units pass through is odd (tanh,
    identity): then flipping a unit's sign (incoming row and outgoing column) is a symmetry too.
    """

    name: str
    size: int
    members: tuple[Member, ...]
    odd: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "odd": self.odd,
            "members": [m.to_json() for m in self.members],
        }


@dataclass(frozen=True)
class Structure:
    """The permutation structure of a model, as found by :func:`permsym.infer_structure`.

    ``masks`` names the binary connection-mask buffers: permutations of the full product
    group change them unless they are automorphisms of the masked unit graph.
    """

    groups: tuple[Group, ...]
    masks: tuple[str, ...] = ()
    arch: str | None = None
    mask_values: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no permutation group {name!r}; groups are {[g.name for g in self.groups]}.")

    @property
    def sizes(self) -> dict[str, int]:
        return {g.name: g.size for g in self.groups}

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "masks": list(self.masks), "groups": [g.to_json() for g in self.groups]}
