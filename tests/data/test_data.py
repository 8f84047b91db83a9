"""Data specs: shapes, determinism, parsing from the right, and the errors users see."""

import pytest
import torch

import permsym
from permsym._errors import PermsymError
from permsym.data import (
    check_fits,
    load,
    load_dataset,
    loss_fn_for,
    parse_spec,
    task_of,
    train_test_split,
)


@pytest.mark.parametrize(
    ("spec", "x_shape", "y_shape", "task"),
    [
        ("synthetic-regression:n=40,d=5,noise=0.2,seed=1", (40, 5), (40, 1), "regression"),
        ("teacher:mlp:6-16-2,act=tanh,n=30,noise=0.1,seed=2", (30, 6), (30, 2), "regression"),
        ("teacher:convnet:1x4x4-3-2,n=10", (10, 16), (10, 2), "regression"),
        ("linear:n=50,d=4", (50, 4), (50, 1), "regression"),
        ("digits", (1797, 64), (1797,), "classification"),
        ("digits:n=100,seed=3", (100, 64), (100,), "classification"),
    ],
)
def test_shapes_task_and_determinism(spec, x_shape, y_shape, task):
    ds = load_dataset(spec)
    assert tuple(ds.X.shape) == x_shape and tuple(ds.y.shape) == y_shape
    assert ds.task == task == task_of(spec)
    X2, y2 = load(spec)
    assert torch.equal(ds.X, X2) and torch.equal(ds.y, y2)


def test_teacher_keys_are_taken_from_the_right():
    spec = parse_spec("teacher:mlp:8-32-1,act=tanh,n=512,noise=0.1,seed=7")
    assert spec.arch == "mlp:8-32-1,act=tanh"
    assert spec.options == {"n": 512, "noise": 0.1, "seed": 7}


def test_teacher_targets_are_the_teacher_network_plus_noise():
    X, y = load("teacher:mlp:4-8-1,n=20,noise=0,seed=5", dtype=torch.float64)
    teacher = permsym.build("mlp:4-8-1", seed=5).double()
    assert torch.allclose(y, teacher(X).detach(), atol=1e-12)


def test_digits_features_in_unit_interval_and_dtype():
    X, y = load("digits", dtype=torch.float64)
    assert X.dtype == torch.float64 and y.dtype == torch.int64
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    assert set(y.tolist()) == set(range(10))


def test_seed_changes_draws():
    assert not torch.equal(load("linear:n=8,seed=0")[0], load("linear:n=8,seed=1")[0])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("mnist", r"data: unknown data spec 'mnist'; expected one of synthetic-regression, teacher, linear, digits"),
        ("linear:n=-3", r"data: linear option n must be a positive integer; got '-3'"),
        ("linear:noise=abc", r"data: linear option noise must be a number >= 0; got 'abc'"),
        ("linear:width=3", r"data: option 'width=3' of 'linear' must be one of n=.., d=.., noise=.., seed=.."),
        ("teacher:n=5", r"data: teacher needs an architecture before its options"),
        ("teacher:mpl:3-1,n=5", r"data: teacher architecture 'mpl:3-1' is not valid"),
        ("digits:n=5000", r"data: digits n must be at most 1797; got 5000"),
    ],
)
def test_bad_specs_raise_actionable_errors(spec, match):
    with pytest.raises(PermsymError, match=match):
        load(spec)


def test_check_fits_rejects_wrong_input_size_and_output_shape():
    X, y = load("linear:n=8,d=4")
    with pytest.raises(PermsymError, match=r"data 'linear:n=8,d=4' has \(4,\) features per sample; model 'mlp:3-1'"):
        check_fits(permsym.build("mlp:3-1"), X, y, "regression", spec="linear:n=8,d=4")
    with pytest.raises(PermsymError, match=r"model output must match the targets .* got output shape \(2,\)"):
        check_fits(permsym.build("mlp:4-2"), X, y, "regression", spec="linear:n=8,d=4")
    Xd, yd = load("digits:n=50")
    with pytest.raises(PermsymError, match=r"model outputs must be at least the 10 classes"):
        check_fits(permsym.build("mlp:64-3"), Xd, yd, "classification", spec="digits")
    check_fits(permsym.build("mlp:64-10"), Xd, yd, "classification")  # fits: no error


def test_loss_fn_for_and_split():
    assert loss_fn_for("regression") is torch.nn.functional.mse_loss
    assert loss_fn_for("classification") is torch.nn.functional.cross_entropy
    with pytest.raises(ValueError, match=r"loss_fn_for: task must be 'regression' or 'classification'; got 'ranking'"):
        loss_fn_for("ranking")
    X, y = load("linear:n=20")
    (a, ya), (b, yb) = train_test_split(X, y, test_fraction=0.25, seed=4)
    (a2, _), (b2, _) = train_test_split(X, y, test_fraction=0.25, seed=4)
    assert len(a) == 15 and len(b) == 5 and torch.equal(a, a2) and torch.equal(b, b2)
    rows = {tuple(r.tolist()) for r in torch.cat([a, b])}
    assert rows == {tuple(r.tolist()) for r in X}
    with pytest.raises(ValueError, match=r"train_test_split: test_fraction must be in \(0, 1\); got 1.5"):
        train_test_split(X, y, test_fraction=1.5)
