r"""``ModularMLP``: M small dense modules with a fixed sparse wiring (DESIGN.md 2.7).

Layer 1 maps the input to every module (dense, ``IN -> M x W``). Each of the ``depth - 1``
further layers updates module $m$ from its own previous units and from the units of the
``links`` modules that feed it, through a fixed binary mask of density ``density`` on each
inter-module block:

$$h^{l}_m = \sigma\Big(W^{l}_{mm} h^{l-1}_m + \sum_{j \in N(m)} (W^{l}_{mj} \odot B^{l}_{mj})\,
h^{l-1}_j + b^{l}_m\Big).$$

Hidden state is kept feature-major, ``(M W, batch)`` viewed as ``(M, W, batch)``: the
input layer and the head are each one plain GEMM on that matrix, and every block product
is a ``torch.bmm`` over the module axis with no layout copies: links as runs of
consecutive modules with consecutive sources, rings as one product over overlapping
windows of the hidden state (details in :mod:`permsym.layers.modular_blocks`). The dense
``(M W) x (M W)`` matrix is never formed. :meth:`ModularMLP.to_masked_mlp` writes the
same function as a dense :class:`~permsym.layers.MaskedLinear` network, whose mask-graph
automorphisms are the symmetries (permutations inside modules, exchanges of identically
wired modules).

Wiring (each module has exactly ``links`` distinct source modules, itself excluded):
``ring`` (offsets $+1, -1, +2, -2, \dots$), ``random`` (a uniform choice per module) and
``small-world`` (ring, each link rewired with probability 0.2, Watts-Strogatz style).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from permsym._errors import PermsymError, check_positive_int, check_probability
from permsym.archs.activations import activation_form, make_activation, parse_activation
from permsym.archs.grammar import (
    ArchSpec,
    Option,
    parse_bool,
    parse_choice,
    parse_density,
    parse_int,
    parse_nonneg_int,
)
from permsym.layers.masked_linear import MaskedLinear
from permsym.layers.modular_blocks import (
    BlockPlan,
    _feature_major_act,
    _gemm,
    _LinearReLU,
    block_plan,
    link_runs,
    module_blocks,
)

__all__ = [
    "MODULAR_OPTIONS", "BlockPlan", "ModularMLP", "block_plan", "build_modular", "link_runs", "module_blocks",
    "module_sources",
]

WIRINGS = ("ring", "random", "small-world")
REWIRE_PROB = 0.2


def module_sources(modules: int, links: int, wiring: str, generator: torch.Generator) -> torch.Tensor:
    """``(modules, links)`` source-module indices, distinct per row, never the row itself."""
    offsets = [(k // 2 + 1) * (1 if k % 2 == 0 else -1) for k in range(links)]
    rows = []
    for m in range(modules):
        if wiring == "random":
            others = [j for j in range(modules) if j != m]
            pick = torch.randperm(len(others), generator=generator)[:links].tolist()
            rows.append([others[i] for i in pick])
            continue
        row = [(m + off) % modules for off in offsets]
        if wiring == "small-world":
            for k in range(links):
                if float(torch.rand((), generator=generator)) < REWIRE_PROB:
                    free = [j for j in range(modules) if j != m and j not in row]
                    if free:
                        row[k] = free[int(torch.randint(len(free), (), generator=generator))]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long).reshape(modules, links)


class ModularMLP(nn.Module):
    r"""Modular MLP: ``IN -> [M modules of width W] x depth -> OUT``.

    Args:
        in_features, out_features: input and output sizes.
        modules: $M \ge 1$; width: $W \ge 1$ units per module; depth: hidden layers $\ge 1$.
        links: source modules per module (each layer after the first), $0 \le$ links $< M$.
        wiring: ``ring``, ``random`` or ``small-world``.
        density: fraction of kept connections in each inter-module block, in $(0, 1]$.
        act: activation name as in arch strings (``relu``, ``legendre8:per_unit``, ...).
        seed: seeds the wiring and the masks; generator: draws the initial weights.

    Examples:
        >>> net = ModularMLP(6, 2, modules=4, width=3, depth=2)
        >>> x = torch.randn(5, 6)
        >>> bool(torch.allclose(net(x), net.to_masked_mlp()(x), atol=1e-6))
        True
    """

    sources: torch.Tensor
    masks: torch.Tensor
    gather: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        modules: int = 4,
        width: int = 8,
        depth: int = 2,
        links: int = 2,
        wiring: str = "ring",
        density: float = 0.5,
        act: str = "relu",
        bias: bool = True,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        call = f"ModularMLP({in_features}, {out_features})"
        check_positive_int(call, "in_features", in_features)
        check_positive_int(call, "out_features", out_features)
        for name, value in (("modules", modules), ("width", width), ("depth", depth)):
            check_positive_int(call, name, value)
        if isinstance(links, bool) or not isinstance(links, int) or not 0 <= links < modules:
            raise ValueError(f"{call}: links must be an integer in [0, modules - 1 = {modules - 1}]; got {links!r}.")
        if wiring not in WIRINGS:
            raise ValueError(f"{call}: wiring must be one of {', '.join(WIRINGS)}; got {wiring!r}.")
        density = check_probability(call, "density", density)
        self.modules_, self.width, self.depth, self.links = modules, width, depth, links
        self.act_name, self.bias = act, bias
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        wiring_gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("sources", module_sources(modules, links, wiring, wiring_gen))
        hidden = modules * width
        fan_in = (1 + links) * width
        self.inp = nn.Parameter(_uniform((modules, width, in_features), in_features, gen))
        self.inp_bias = nn.Parameter(_uniform((modules, width), in_features, gen)) if bias else None
        masks = torch.ones(depth - 1, modules, width, fan_in)
        masks[..., width:] = (torch.rand(depth - 1, modules, width, links * width, generator=wiring_gen) < density).float()
        self.register_buffer("masks", masks)
        kept = masks.sum(-1, keepdim=True).clamp(min=1)
        weights = torch.empty(depth - 1, modules, width, fan_in).uniform_(-1, 1, generator=gen)
        self.weights = nn.Parameter(weights * masks / kept.sqrt())
        self.biases = nn.Parameter(_uniform((depth - 1, modules, width), fan_in, gen)) if bias else None
        self.acts = nn.ModuleList(make_activation(act, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_features, bias=bias)
        with torch.no_grad():
            self.out.weight.copy_(_uniform((out_features, hidden), hidden, gen))
            if self.out.bias is not None:
                self.out.bias.copy_(_uniform((out_features,), hidden, gen))
        gather = torch.cat([torch.arange(modules)[:, None], self.sources], dim=1)
        self.register_buffer("gather", gather, persistent=False)  # own module first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # decided first: under torch.compile, _block_plan below is a graph break (it reads
        # the wiring's values), and the rest of forward runs in a resumed frame
        tracing = is_fx_symbolic_tracing() or torch.compiler.is_compiling()
        m, w = self.modules_, self.width
        # hidden state is feature-major: (M W, N), viewed (M, W, N) for the module blocks
        bias = self.inp_bias.reshape(-1, 1) if self.inp_bias is not None else None
        plan = None if torch._C._are_functorch_transforms_active() else self._block_plan()
        # with fused ReLUs throughout and a ring-like wiring, hidden states carry ghost
        # copies of the wrap-around modules: every module block is then in one window bmm
        # (not while traced: the ghosts live outside the tensors' own bounds)
        fused = plan is not None and all(type(act) is nn.ReLU for act in self.acts)
        ghosts = None
        if fused and plan.window is not None and self.depth > 1 and not tracing and x.shape[0]:
            ghosts = plan.window.ghosts
        if fused:
            rows = (ghosts[0] * w, ghosts[1] * w) if ghosts is not None else None
            h = _LinearReLU.apply(x.T, self.inp.reshape(m * w, -1), bias, rows)
        else:
            h = _feature_major_act(self.acts[0], _gemm(self.inp.reshape(m * w, -1), x.T, bias))
        h = h.view(m, w, -1)
        for layer in range(self.depth - 1):
            bias = self.biases[layer] if self.biases is not None else None
            act = self.acts[layer + 1]
            relu = type(act) is nn.ReLU
            ghost_in, ghost_out = ghosts is not None, ghosts is not None and layer < self.depth - 2
            h = module_blocks(
                h, self.weights[layer] * self.masks[layer], bias, self.sources, plan,
                relu=relu, ghost_in=ghost_in, ghost_out=ghost_out,
            )
            h = h if relu else _feature_major_act(act, h)
        bias = self.out.bias.unsqueeze(1) if self.out.bias is not None else None
        # y^T = W_out h: the gradient of h comes back contiguous; y itself is made contiguous
        return _gemm(self.out.weight, h.view(m * w, -1), bias).T.contiguous()

    def _block_plan(self) -> BlockPlan:
        """:func:`block_plan` of the wiring, cached until the ``sources`` buffer changes; read
        from the buffer itself (not through fx proxies or fake tensors), so that tracing
        sees a constant."""
        sources = self._buffers["sources"]
        assert sources is not None
        key = (sources.data_ptr(), sources._version)
        if getattr(self, "_plan_key", None) != key:
            self._plan, self._plan_key = block_plan(sources.tolist(), self.width), key
        return self._plan

    def dense_masks(self) -> list[torch.Tensor]:
        """The binary masks of the equivalent dense network, input layer first."""
        m, w = self.modules_, self.width
        out = [torch.ones(m * w, self.inp.shape[-1])]
        for layer in range(self.depth - 1):
            out.append(self._dense(self.masks[layer]))
        out.append(torch.ones(self.out.out_features, m * w))
        return out

    def _dense(self, blocks: torch.Tensor) -> torch.Tensor:
        """Scatter ``(M, W, (1 + links) W)`` blocks into an ``(M W, M W)`` matrix."""
        m, w = self.modules_, self.width
        dense = blocks.new_zeros(m, w, m, w)
        src = blocks.view(m, w, 1 + self.links, w)
        for k, col in enumerate(self.gather.T.tolist()):
            dense[torch.arange(m), :, col, :] = src[:, :, k, :]
        return dense.reshape(m * w, m * w)

    @torch.no_grad()
    def to_masked_mlp(self) -> nn.Sequential:
        """The same function as a dense ``nn.Sequential`` of ``MaskedLinear`` layers.

        Names follow permsym's ``mlp`` builder (``fc1, act1, ..., out``); activations are
        deep copies. Used for correctness checks and by ``count_symmetries``.
        """
        masks = self.dense_masks()
        hidden, n_in = self.modules_ * self.width, self.inp.shape[-1]
        dtype = self.inp.dtype
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        weights = [self.inp.reshape(hidden, n_in)] + [self._dense(w) for w in self.weights]
        biases = [self.inp_bias] + list(self.biases if self.biases is not None else [None] * (self.depth - 1))
        for k in range(self.depth):
            fan_in = n_in if k == 0 else hidden
            layer = MaskedLinear(fan_in, hidden, masks[k], bias=self.bias, generator=torch.Generator()).to(dtype)
            layer.weight.copy_(weights[k] * layer.mask)
            if layer.bias is not None and biases[k] is not None:
                layer.bias.copy_(biases[k].reshape(-1))
            layers[f"fc{k + 1}"] = layer
            layers[f"act{k + 1}"] = copy.deepcopy(self.acts[k])
        out = MaskedLinear(hidden, self.out.out_features, masks[-1], bias=self.bias, generator=torch.Generator()).to(dtype)
        out.weight.copy_(self.out.weight)
        if out.bias is not None:
            out.bias.copy_(self.out.bias)
        layers["out"] = out
        return nn.Sequential(layers)

    def extra_repr(self) -> str:
        return f"modules={self.modules_}, width={self.width}, depth={self.depth}, links={self.links}"


torch.fx.wrap("module_blocks")  # a leaf for permsym's fx tracing (symmetry inference), wrapped where it is called


def _uniform(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


MODULAR_OPTIONS: dict[str, Option] = {
    "modules": Option(parse_int, 4, "a positive integer"),
    "width": Option(parse_int, 8, "a positive integer"),
    "depth": Option(parse_int, 2, "a positive integer"),
    "links": Option(parse_nonneg_int, 2, "an integer in [0, modules - 1]"),
    "wiring": Option(parse_choice(*WIRINGS), "ring", "|".join(WIRINGS)),
    "density": Option(parse_density, 0.5, "a number in (0, 1]"),
    "seed": Option(parse_nonneg_int, 0, "a non-negative integer"),
    "act": Option(parse_activation, "relu", activation_form()),
    "bias": Option(parse_bool, True, "true|false"),
}
"""Option keys of ``modular:IN-OUT,...`` arch strings."""


def build_modular(spec: ArchSpec, generator: torch.Generator) -> nn.Module:
    """``modular:IN-OUT,modules=M,width=W,depth=D,links=K,wiring=..,density=..,seed=..``."""
    if len(spec.dims) != 2 or any(len(d) != 1 for d in spec.dims):
        raise PermsymError(f"modular takes exactly IN-OUT; got {spec.text!r} (e.g. 'modular:64-10,modules=4').")
    opts = spec.options
    return ModularMLP(
        spec.dims[0][0],
        spec.dims[1][0],
        modules=opts["modules"],
        width=opts["width"],
        depth=opts["depth"],
        links=opts["links"],
        wiring=opts["wiring"],
        density=opts["density"],
        act=opts["act"],
        bias=opts["bias"],
        seed=opts["seed"],
        generator=generator,
    )


def _register() -> None:
    """Make ``modular`` usable in arch strings even when this module is imported first
    (then ``permsym.archs`` finished importing before ``MODULAR_OPTIONS`` existed)."""
    import permsym.archs as archs

    archs.FAMILIES.setdefault("modular", MODULAR_OPTIONS)


_register()
