"""Infer the permutation structure of a model by walking its torch.fx graph.

Every tensor in the graph gets an annotation: which unit space its feature axis carries
(or none: the axis is fixed, as for the model's inputs and outputs). Linear and conv layers
open a new space for their outputs; element-wise ops, normalisation, pooling and flatten
carry it on; residual additions merge the spaces they add; the model's outputs, and
anything added to an input, pin their space. The spaces left unpinned are the groups.
An op on a permuted axis that is not understood raises, naming the fx node.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from permsym._errors import PermsymError
from permsym.layers.masked_linear import MaskedLinear
from permsym.symmetry.structure import Group, Member, Structure

ODD_MODULES: tuple[type[nn.Module], ...] = (nn.Tanh, nn.Identity, nn.Softsign, nn.Tanhshrink)
ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.LogSigmoid, nn.Hardtanh, *ODD_MODULES,
)  # fmt: skip
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
NEUTRAL_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

ODD_FUNCTIONS = {torch.tanh, F.tanh, operator.neg, torch.neg, F.softsign, F.dropout}
ELEMENTWISE_FUNCTIONS = ODD_FUNCTIONS | {
    torch.relu, F.relu, torch.sigmoid, F.sigmoid, F.gelu, F.silu, F.elu, F.leaky_relu, F.softplus,
    F.mish, torch.exp, torch.abs, torch.square, torch.sqrt, F.relu6, F.hardswish, F.hardsigmoid,
}  # fmt: skip
ODD_METHODS = {"tanh", "neg", "contiguous", "clone", "detach", "float", "double", "to"}
ELEMENTWISE_METHODS = ODD_METHODS | {"relu", "sigmoid", "exp", "abs", "square", "sqrt"}
ADD_OPS = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub}
MUL_OPS = {operator.mul, operator.truediv, operator.imul, torch.mul, torch.div}
ADD_METHODS = {"add", "sub", "add_", "sub_"}
MUL_METHODS = {"mul", "div", "mul_", "div_"}
SHAPE_METHODS = {"size", "dim"}
SAFE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}


def _is_odd_module(mod: nn.Module) -> bool:
    """Odd activations: tanh-like ones, and Hardtanh only with symmetric bounds (ReLU6 is not)."""
    if type(mod) is nn.Hardtanh:
        return mod.min_val == -mod.max_val
    return isinstance(mod, ODD_MODULES)


def _arg(node: fx.Node, index: int, *names: str, default: Any = None) -> Any:
    """Positional argument ``index`` of an fx call, or its keyword spelling (``dim``/``axis``...)."""
    if len(node.args) > index:
        return node.args[index]
    for name in names:
        if name in node.kwargs:
            return node.kwargs[name]
    return default


@dataclass(frozen=True)
class Ann:
    """Annotation of a tensor: unit space on ``axis`` (``space is None``: nothing permuted)."""

    space: int | None = None
    axis: int = 1
    block: int = 1


FIXED = Ann()
NOT_A_TENSOR = Ann(space=None, axis=-1)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Linear, *CONV)) or getattr(m, "permsym_elementwise", False):
            return True
        return super().is_leaf_module(m, qualname)


class _Spaces:
    """Union-find over unit spaces; space 0 is the fixed (unpermutable) space."""

    def __init__(self) -> None:
        self.parent = [0]
        self.size = [0]
        self.origin = ["<fixed>"]
        self.odd = [True]
        self.members: list[list[Member]] = [[]]

    def new(self, size: int, origin: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.origin.append(origin)
        self.odd.append(True)
        self.members.append([])
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if 0 not in (ra, rb) and self.size[ra] != self.size[rb]:
            raise PermsymError(f"infer_structure: node {where!r} joins unit spaces of sizes "
                               f"{self.size[ra]} and {self.size[rb]}.")
        if rb == 0 or (ra != 0 and rb < ra):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members[rb])
        self.odd[ra] = self.odd[ra] and self.odd[rb]
        return ra

    def add(self, s: int, member: Member) -> None:
        self.members[self.find(s)].append(member)

    def not_odd(self, s: int) -> None:
        self.odd[self.find(s)] = False


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Walker:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.spaces = _Spaces()
        self.ann: dict[fx.Node, Ann] = {}
        self.masks: list[str] = []

    # -- helpers ---------------------------------------------------------------------------
    def fail(self, node: fx.Node, why: str) -> PermsymError:
        return PermsymError(f"infer_structure: cannot follow permuted units through fx node "
                            f"{node.name!r} ({node.op} {_target_name(node)}): {why}.")

    def arg_ann(self, arg: Any) -> Ann | None:
        return self.ann.get(arg) if isinstance(arg, fx.Node) else None

    def input_ann(self, node: fx.Node) -> Ann:
        """The annotation of a call's main input; any other permuted tensor argument is refused."""
        main = _arg(node, 0, "input")
        for leaf in torch.utils._pytree.tree_leaves((node.args, node.kwargs)):
            ann = self.arg_ann(leaf)
            if leaf is not main and ann is not None and ann.space is not None:
                raise self.fail(node, "a permuted tensor is passed as an argument other than the main input")
        ann = self.arg_ann(main)
        return ann if ann is not None else FIXED

    def member(self, ann: Ann, name: str, axis: int, block: int | None = None) -> None:
        if ann.space is not None:
            self.spaces.add(ann.space, Member(name, axis, ann.block if block is None else block))

    # -- graph walk -------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.ann[node] = FIXED
            elif node.op == "get_attr":
                self.ann[node] = FIXED
            elif node.op == "call_module":
                self.ann[node] = self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.ann[node] = self.call_function(node)
            elif node.op == "output":
                for arg in torch.utils._pytree.tree_leaves(node.args):
                    ann = self.arg_ann(arg)
                    if ann is not None and ann.space is not None:
                        self.spaces.union(0, ann.space, node.name)

    def call_module(self, node: fx.Node) -> Ann:
        mod = self.modules[str(node.target)]
        name = str(node.target)
        prefix = f"{name}." if name else ""
        ann = self.input_ann(node)
        shape = _shape(_arg(node, 0, "input"))
        if isinstance(mod, nn.Linear):
            if ann.space is not None and shape is not None and ann.axis != len(shape) - 1:
                raise self.fail(node, "Linear applied to a tensor whose units are not on the last axis")
            self.member(ann, prefix + "weight", 1)
            if isinstance(mod, MaskedLinear):
                self.member(ann, prefix + "mask", 1)
                self.masks.append(prefix + "mask")
            out = self.spaces.new(mod.out_features, name)
            for pname in ("weight", "bias", "mask"):
                if getattr(mod, pname, None) is not None:
                    self.spaces.add(out, Member(prefix + pname, 0))
            out_shape = _shape(node)
            return Ann(out, axis=len(out_shape) - 1 if out_shape else 1)
        if isinstance(mod, CONV):
            if mod.groups != 1:
                raise self.fail(node, f"grouped convolution (groups={mod.groups}) is not supported")
            if ann.space is not None and (ann.axis != 1 or ann.block != 1):
                raise self.fail(node, "convolution input units are not on the channel axis")
            self.member(ann, prefix + "weight", 1)
            out = self.spaces.new(mod.out_channels, name)
            self.spaces.add(out, Member(prefix + "weight", 0))
            if mod.bias is not None:
                self.spaces.add(out, Member(prefix + "bias", 0))
            return Ann(out, axis=1)
        if isinstance(mod, nn.Embedding):
            out = self.spaces.new(mod.embedding_dim, name)
            self.spaces.add(out, Member(prefix + "weight", 1))
            out_shape = _shape(node)
            return Ann(out, axis=len(out_shape) - 1 if out_shape else 1)
        if ann.space is None:
            return FIXED  # nothing permuted flows in: any module is fine
        if isinstance(mod, BATCHNORM):
            if ann.axis != 1 or ann.block != 1:
                raise self.fail(node, "BatchNorm over an axis that is not the unit axis")
            for pname in ("weight", "bias", "running_mean", "running_var"):
                if getattr(mod, pname, None) is not None:
                    self.member(ann, prefix + pname, 0)
            self.spaces.not_odd(ann.space)
            return ann
        if isinstance(mod, nn.LayerNorm):
            if shape is None or tuple(mod.normalized_shape) != (shape[-1],) or ann.axis != len(shape) - 1:
                raise self.fail(node, "LayerNorm must normalise exactly the unit axis (the last one)")
            for pname in ("weight", "bias"):
                if getattr(mod, pname, None) is not None:
                    self.member(ann, prefix + pname, 0)
            self.spaces.not_odd(ann.space)
            return ann
        if isinstance(mod, ELEMENTWISE_MODULES):
            if not _is_odd_module(mod):
                self.spaces.not_odd(ann.space)
            return ann
        if isinstance(mod, NEUTRAL_MODULES):
            return ann
        if isinstance(mod, nn.PReLU):
            if mod.num_parameters > 1:
                self.member(ann, prefix + "weight", 0, block=1)
            self.spaces.not_odd(ann.space)
            return ann
        if getattr(mod, "permsym_elementwise", False):
            for pname, axis in dict(getattr(mod, "permsym_unit_params", {})).items():
                self.member(ann, prefix + pname, axis, block=1)
            if not getattr(mod, "permsym_odd", False):
                self.spaces.not_odd(ann.space)
            return ann
        if isinstance(mod, POOL_MODULES):
            if ann.axis != 1 or ann.block != 1 or shape is None or len(shape) < 3:
                raise self.fail(node, "pooling over a tensor whose units are not on the channel axis of a batch")
            if isinstance(mod, MAX_POOLS):
                self.spaces.not_odd(ann.space)
            return ann
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, ann, mod.start_dim, mod.end_dim)
        raise self.fail(node, f"module type {type(mod).__name__} is not understood on a permuted axis")

    def flatten(self, node: fx.Node, ann: Ann, start: int, end: int) -> Ann:
        shape = _shape(_arg(node, 0, "input"))
        if shape is None:
            raise self.fail(node, "unknown input shape")
        nd = len(shape)
        start, end = start % nd, end % nd
        if ann.axis < start:
            return ann
        if ann.axis > end:
            return Ann(ann.space, ann.axis - (end - start), ann.block)
        if ann.axis != start:
            raise self.fail(node, "flatten merges the unit axis into an axis before it")
        inner = math.prod(shape[start + 1 : end + 1])
        return Ann(ann.space, start, ann.block * inner)

    def call_function(self, node: fx.Node) -> Ann:
        target = node.target
        args = list(node.args) + list(node.kwargs.values())
        anns = [self.arg_ann(a) for a in args]
        nested = [self.arg_ann(a) for a in torch.utils._pytree.tree_leaves(args)]  # lists of tensors too
        permuted = [a for a in nested if a is not None and a is not NOT_A_TENSOR and a.space is not None]
        is_method = node.op == "call_method"
        if target is getattr:
            if permuted and _arg(node, 1) not in SAFE_ATTRIBUTES:
                raise self.fail(node, f"attribute {_arg(node, 1)!r} of a permuted tensor is not understood")
            return NOT_A_TENSOR
        if is_method and target in SHAPE_METHODS:
            return NOT_A_TENSOR
        if not permuted:
            return FIXED
        ann = permuted[0]
        if (is_method and target in ELEMENTWISE_METHODS) or target in ELEMENTWISE_FUNCTIONS:
            if not ((is_method and target in ODD_METHODS) or target in ODD_FUNCTIONS):
                self.spaces.not_odd(ann.space)
            return ann
        if target in ADD_OPS or target in MUL_OPS or (is_method and target in ADD_METHODS | MUL_METHODS):
            return self.binary(node, args, anns, multiplicative=target in MUL_OPS or target in MUL_METHODS)
        if len(permuted) > 1 and not (target in ADD_OPS or target in MUL_OPS or (is_method and target in ADD_METHODS | MUL_METHODS)):
            raise self.fail(node, "several permuted tensors enter an operation that is not element-wise")
        if target in (torch.flatten,) or (is_method and target == "flatten"):
            return self.flatten(node, ann, int(_arg(node, 1, "start_dim", default=0)), int(_arg(node, 2, "end_dim", default=-1)))
        if (is_method and target in ("view", "reshape")) or target is torch.reshape:
            return self.reshape(node, ann)
        if (is_method and target in ("mean", "sum", "amax")) or target in (torch.mean, torch.sum, torch.amax):
            return self.reduce(node, ann)
        if target in (F.softmax, F.log_softmax, torch.softmax) or (is_method and target in ("softmax", "log_softmax")):
            self.spaces.not_odd(ann.space)
            return ann
        raise self.fail(node, "this operation is not understood on a permuted axis")

    def binary(self, node: fx.Node, args: list[Any], anns: list[Ann | None], *, multiplicative: bool) -> Ann:
        out_shape = _shape(node)
        result: Ann | None = None
        for arg, ann in zip(args, anns, strict=True):
            if ann is None or ann is NOT_A_TENSOR:
                continue  # a Python scalar
            if ann.space is None:
                shape = _shape(arg)
                if shape is None or out_shape is None:
                    raise self.fail(node, "unknown shape of an operand")
                continue
            if result is None:
                result = ann
            elif (ann.axis, ann.block) != (result.axis, result.block):
                raise self.fail(node, "operands carry units on different axes")
            else:
                self.spaces.union(result.space, ann.space, node.name)  # type: ignore[arg-type]
        assert result is not None
        # a fixed tensor that varies along the unit axis pins the space (nothing to permute it with)
        for arg, ann in zip(args, anns, strict=True):
            if ann is not None and ann is not NOT_A_TENSOR and ann.space is None:
                shape = _shape(arg)
                assert shape is not None and out_shape is not None
                offset = len(out_shape) - len(shape)
                axis_in_arg = result.axis - offset
                if 0 <= axis_in_arg < len(shape) and shape[axis_in_arg] != 1:
                    self.spaces.union(0, result.space, node.name)  # type: ignore[arg-type]
        n_tensors = sum(1 for a in anns if a is not None and a is not NOT_A_TENSOR)
        if n_tensors > 1 or not multiplicative:  # x * c stays odd; x + c and x + y do not
            self.spaces.not_odd(result.space)  # type: ignore[arg-type]
        return result

    def reshape(self, node: fx.Node, ann: Ann) -> Ann:
        in_shape, out_shape = _shape(_arg(node, 0, "input")), _shape(node)
        if in_shape is None or out_shape is None:
            raise self.fail(node, "unknown shape")
        if in_shape == out_shape:
            return ann
        a = ann.axis
        if out_shape == in_shape[:a] + (math.prod(in_shape[a:]),):
            return Ann(ann.space, a, ann.block * math.prod(in_shape[a + 1 :]))
        raise self.fail(node, f"reshape {in_shape} -> {out_shape} splits or mixes the unit axis")

    def reduce(self, node: fx.Node, ann: Ann) -> Ann:
        in_shape = _shape(_arg(node, 0, "input"))
        dim = _arg(node, 1, "dim", "axis")
        keepdim = bool(_arg(node, 2, "keepdim", default=False))
        if node.target in ("amax", torch.amax):
            self.spaces.not_odd(ann.space)
        if in_shape is None:
            raise self.fail(node, "unknown shape")
        nd = len(in_shape)
        dims = set(range(nd)) if dim is None else {d % nd for d in ((dim,) if isinstance(dim, int) else dim)}
        if ann.axis in dims:
            self.spaces.not_odd(ann.space)  # a sum of odd functions of the units is not odd in each unit
            return FIXED  # but it is invariant under their permutation
        if ann.block != 1:
            raise self.fail(node, "reduction over a flattened unit axis")
        shift = 0 if keepdim else sum(1 for d in dims if d < ann.axis)
        return Ann(ann.space, ann.axis - shift, ann.block)

    def structure(self, state: dict[str, torch.Tensor], arch: str | None) -> Structure:
        sp = self.spaces
        # tensors shared between spaces (weight tying, a module called twice) tie the spaces
        owner: dict[tuple[str, int], int] = {}
        for s in range(1, len(sp.parent)):
            for m in list(sp.members[s]) if sp.find(s) == s else []:
                key = (m.name, m.axis)
                if key in owner and sp.find(owner[key]) != sp.find(s):
                    sp.union(owner[key], s, m.name)
                owner[key] = sp.find(s)
        groups = []
        for s in range(1, len(sp.parent)):
            if sp.find(s) != s:
                continue
            members = tuple(dict.fromkeys(sp.members[s]))
            for m in members:
                extent = state[m.name].shape[m.axis]
                if extent != sp.size[s] * m.block:
                    raise PermsymError(
                        f"infer_structure: {m.name!r} axis {m.axis} has {extent} entries; units of "
                        f"{sp.origin[s]!r} need {sp.size[s]} x {m.block}.")
            if sp.size[s] > 1 or members:
                groups.append(Group(sp.origin[s], sp.size[s], members, odd=sp.odd[s]))
        masks = tuple(dict.fromkeys(self.masks))
        values = {name: state[name].detach().clone() for name in masks}
        return Structure(tuple(groups), masks=masks, arch=arch, mask_values=values)


def _target_name(node: fx.Node) -> str:
    t = node.target
    return getattr(t, "__name__", str(t))


def infer_structure(model: nn.Module, example_input: torch.Tensor) -> Structure:
    """Find every group of hidden units that can be permuted without changing ``model``.

    Traces ``model`` with torch.fx, propagates shapes with ``example_input``, then follows the
    unit spaces through the graph (see the module docstring). The model is not changed.

    Raises:
        PermsymError: if the model cannot be traced or uses an op on permuted units that is
            not understood (the message names the fx node).

    Examples:
        >>> import permsym
        >>> s = infer_structure(permsym.build("mlp:4-8-8-2"), torch.zeros(2, 4))
        >>> [(g.name, g.size) for g in s.groups]
        [('fc1', 8), ('fc2', 8)]
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types; the user needs the reason, not the type
        raise PermsymError(f"infer_structure: torch.fx cannot trace {type(model).__name__}: "
                           f"{str(exc).splitlines()[0]}") from None
    gm = fx.GraphModule(model, graph)
    dtype = next((p.dtype for p in model.parameters()), None)
    if dtype is not None and example_input.is_floating_point() and example_input.dtype != dtype:
        example_input = example_input.to(dtype)
    modes = {m: m.training for m in model.modules()}
    try:
        gm.eval()
        # fake tensors: shapes only, no arithmetic on (and no in-place change of) the user's tensors
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake_log = logging.getLogger("torch._subclasses.fake_tensor")
        quiet, fake_log.disabled = fake_log.disabled, True
        try:  # ShapeProp prints a traceback before raising; the one-line error below says it all
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                ShapeProp(gm, fake_mode=mode).propagate(mode.from_tensor(example_input))
        finally:
            fake_log.disabled = quiet
    except Exception as exc:  # shape errors surface as many types; report the cause in one line
        cause = exc.__cause__ or exc
        reason = " ".join(str(cause).split())[:300]
        raise PermsymError(
            f"infer_structure: the example input of shape {tuple(example_input.shape)} does not run through "
            f"{type(model).__name__}: {reason}"
        ) from None
    finally:
        for m, mode_flag in modes.items():
            m.training = mode_flag
    walker = _Walker(gm)
    walker.run()
    return walker.structure(model.state_dict(), getattr(model, "permsym_arch", None))
