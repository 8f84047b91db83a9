"""Structure inference on hand-written models: what is found, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import permsym
from permsym._errors import PermsymError
from permsym.symmetry import apply_permutation, infer_structure, random_permutation
from tests.assertions import relative_error


def _check_same_function(model: nn.Module, x: torch.Tensor, seed: int = 0) -> dict:
    model = model.double().eval()
    x = x.double()
    s = infer_structure(model, x)
    perms = random_permutation(s, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert relative_error(apply_permutation(model, s, perms).eval()(x), model(x)) < 1e-10
    return {g.name: g for g in s.groups}


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 5, 3, padding=1)
        self.bn = nn.BatchNorm1d(5)
        self.prelu = nn.PReLU(5)
        self.drop = nn.Dropout(0.1)
        self.pool = nn.AvgPool1d(2)
        self.head = nn.Linear(5 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.drop(self.prelu(self.bn(self.conv(x)))))
        return self.head(h.view(h.size(0), -1))


def test_conv1d_batchnorm_prelu_dropout_and_view_flatten() -> None:
    groups = _check_same_function(Conv1dNet(), torch.randn(4, 2, 8))
    g = groups["conv"]
    assert g.size == 5
    names = {(m.name, m.axis, m.block) for m in g.members}
    assert ("prelu.weight", 0, 1) in names and ("bn.running_var", 0, 1) in names
    assert ("head.weight", 1, 4) in names  # 5 channels x 4 positions flattened


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = h + torch.tanh(self.fc2(h)) * 0.5  # residual: fc1 and fc2 units merge
        return self.fc3(h.relu())


def test_functional_ops_and_residual_merge() -> None:
    groups = _check_same_function(FunctionalNet(), torch.randn(3, 4))
    assert list(groups) == ["fc1"] and groups["fc1"].size == 6
    assert {m.name for m in groups["fc1"].members} >= {"fc1.weight", "fc2.weight", "fc2.bias", "fc3.weight"}


class InputResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) + x


def test_adding_the_input_pins_a_space() -> None:
    groups = _check_same_function(InputResidual(), torch.randn(3, 4))
    assert list(groups) == ["fc1"]


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mid(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.mid(h)))  # `mid` used twice: its spaces are tied


def test_a_module_called_twice_ties_its_spaces() -> None:
    groups = _check_same_function(Shared(), torch.randn(3, 3))
    assert len(groups) == 1 and next(iter(groups.values())).size == 5


class GlobalPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_mean_over_space_keeps_the_channels() -> None:
    assert _check_same_function(GlobalPool(), torch.randn(2, 1, 6, 6))["conv"].size == 4


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


class Slice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(3, 4), nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x)[:, :2])


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


@pytest.mark.parametrize(
    ("model", "x", "message"),
    [
        (Cat(), torch.randn(2, 3), r"fx node 'cat' \(call_function cat\): several permuted tensors"),
        (Slice(), torch.randn(2, 3), r"fx node 'getitem' \(call_function getitem\)"),
        (Grouped(), torch.randn(2, 2, 3, 3), r"fx node 'b' .*grouped convolution \(groups=2\)"),
    ],
)
def test_unknown_ops_on_permuted_units_are_refused_by_name(model: nn.Module, x: torch.Tensor, message: str) -> None:
    with pytest.raises(PermsymError, match=message):
        infer_structure(model, x)


def test_untraceable_model_gives_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(PermsymError, match="torch.fx cannot trace Branchy"):
        infer_structure(Branchy(), torch.randn(1, 2))


def test_inference_leaves_the_model_as_it_was() -> None:
    model = permsym.build("convnet:1x4x4-3-2")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    infer_structure(model, torch.randn(2, 16))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_permutations_are_refused() -> None:
    model = permsym.build("mlp:3-4-2")
    s = infer_structure(model, torch.zeros(1, 3))
    with pytest.raises(PermsymError, match=r"perms\['fc1'\] must be a permutation of 0..3; got \[0, 0, 1, 2\]"):
        apply_permutation(model, s, {"fc1": torch.tensor([0, 0, 1, 2])})
    with pytest.raises(PermsymError, match="no group named 'fc9'"):
        apply_permutation(model, s, {"fc9": torch.arange(4)})
    with pytest.raises(TypeError, match="expected an nn.Module or a state dict; got int"):
        apply_permutation(3, s, {})


class _Two(nn.Module):
    """a: Linear(3, 4) -> relu -> <variant> -> b: Linear(4, 2)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.a, self.b, self.variant = nn.Linear(3, 4), nn.Linear(4, 2), variant
        self.pool1d = nn.AvgPool1d(3, 1, 1)
        self.bilinear = nn.Bilinear(3, 4, 2)

    def forward(self, x: torch.Tensor) -> Any:
        h = torch.relu(self.a(x))
        if self.variant == "data":
            return self.b(h.data)
        if self.variant == "T":
            return h.T
        if self.variant == "keyword":
            return self.b(input=h)
        if self.variant == "bilinear":
            return self.bilinear(x, h)
        if self.variant == "pool1d":
            return self.b(self.pool1d(h))
        if self.variant == "sum_axis":
            return self.b(h), h.sum(axis=0)
        if self.variant == "sum_input_kw":
            return self.b(h) * torch.sum(input=h, dim=1, keepdim=True)
        raise AssertionError(self.variant)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("data", r"attribute 'data' of a permuted tensor is not understood"),
        ("T", r"attribute 'T' of a permuted tensor is not understood"),
        ("bilinear", r"a permuted tensor is passed as an argument other than the main input"),
        ("pool1d", r"pooling over a tensor whose units are not on the channel axis"),
    ],
)
def test_ops_that_would_silently_break_the_symmetry_are_refused(variant: str, message: str) -> None:
    with pytest.raises(PermsymError, match=message):
        infer_structure(_Two(variant), torch.randn(2, 3))


@pytest.mark.parametrize(("variant", "groups"), [("keyword", ["a"]), ("sum_axis", []), ("sum_input_kw", ["a"])])
def test_keyword_arguments_and_axis_aliases(variant: str, groups: list[str]) -> None:
    model = _Two(variant).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    s = infer_structure(model, x)
    assert [g.name for g in s.groups] == groups
    perms = random_permutation(s, torch.Generator().manual_seed(1))
    out, out_perm = model(x), apply_permutation(model, s, perms)(x)
    for a, b in zip(out if isinstance(out, tuple) else (out,), out_perm if isinstance(out_perm, tuple) else (out_perm,), strict=True):
        assert relative_error(b, a) < 1e-10


def _odd(model: nn.Module, x: torch.Tensor) -> list[bool]:
    return [g.odd for g in infer_structure(model, x).groups]


def test_odd_flags_only_where_sign_flips_are_symmetries() -> None:
    x2, x4 = torch.randn(2, 3), torch.randn(2, 1, 6, 6)
    assert _odd(nn.Sequential(nn.Linear(3, 4), nn.Hardtanh(), nn.Linear(4, 2)), x2) == [True]
    assert _odd(nn.Sequential(nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 2)), x2) == [False]
    assert _odd(nn.Sequential(nn.Linear(3, 4), nn.Hardtanh(0.0, 1.0), nn.Linear(4, 2)), x2) == [False]
    conv_max = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2))
    conv_avg = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 2))
    assert _odd(conv_max, x4) == [False] and _odd(conv_avg, x4) == [True]

    class SumUnits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.a(x)).sum(1)

    assert _odd(SumUnits(), x2) == [False]


def test_inference_runs_no_arithmetic_on_the_model() -> None:
    class Emb(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e, self.l = nn.Embedding(10, 4, max_norm=0.5), nn.Linear(4, 2)

        def forward(self, i: torch.Tensor) -> torch.Tensor:
            return self.l(torch.relu(self.e(i)))

    model = Emb()
    before = model.e.weight.detach().clone()
    s = infer_structure(model, torch.tensor([[0, 1]]))
    assert torch.equal(model.e.weight, before)  # max_norm renormalises in place when really run
    assert [g.name for g in s.groups] == ["e"]


def test_a_wrong_example_input_is_one_clear_line() -> None:
    with pytest.raises(PermsymError, match=r"^infer_structure: the example input of shape \(2, 5\) does not run through Sequential: .*reduction dim") as info:
        infer_structure(permsym.build("mlp:4-8-2"), torch.zeros(2, 5))
    assert "\n" not in str(info.value)
