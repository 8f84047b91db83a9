"""``permsym train|hessian|noise|equilibrium``: JSON conventions and exit code 2 on bad input."""

import json

import pytest

import permsym
from permsym.cli import main


def _run(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def linear_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lin.safetensors"
    assert main(["train", "mlp:3-1", "--data", "linear:n=256,d=3", "--out", str(path), "--epochs", "20",
                 "--lr", "0.05", "--batch-size", "16", "--json"]) == 0
    return str(path)


def test_train_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "d.safetensors"
    code, stdout, _ = _run(capsys, ["train", "mlp:64-16-10,act=tanh", "--data", "digits:n=200", "--out", str(out),
                                     "--epochs", "2", "--json"])
    assert code == 0
    payload = json.loads(stdout)
    assert payload["epochs"] == 2 and payload["steps"] == 2 * 7
    model = permsym.io.load(out)
    assert model.permsym_arch == "mlp:64-16-10,act=tanh"


def test_hessian_json(linear_ckpt, capsys):
    code, out, _ = _run(capsys, ["hessian", linear_ckpt, "--data", "linear:n=256,d=3", "--top-k", "2", "--trace",
                                 "--density", "--json"])
    assert code == 0
    p = json.loads(out)
    assert len(p["top_eigenvalues"]) == 2 and p["num_params"] == 4
    assert p["top_eigenvalues"][0] >= p["top_eigenvalues"][1] > 0
    assert set(p["trace"]) >= {"estimate", "stderr"}
    assert len(p["density"]["grid"]) == len(p["density"]["values"])


def test_noise_json(linear_ckpt, capsys):
    code, out, _ = _run(capsys, ["noise", linear_ckpt, "--data", "linear:n=256,d=3", "--batch-size", "4",
                                 "--lr", "0.1", "--json"])
    assert code == 0
    p = json.loads(out)
    assert p["temperature"] == pytest.approx(0.1 * p["trace_C"] / (2 * 4 * 4))
    assert p["noise_scale"] == pytest.approx(p["trace_C"] / p["grad_norm_sq"])


def test_equilibrium_json(linear_ckpt, capsys):
    code, out, _ = _run(capsys, ["equilibrium", linear_ckpt, "--data", "linear:n=256,d=3", "--lr", "0.1",
                                 "--batch-size", "4", "--steps", "3000", "--json"])
    assert code == 0
    p = json.loads(out)
    assert len(p["directions"]) == 4 and p["linear"] is True
    for d in p["directions"]:
        assert set(d) >= {"eigenvalue", "predicted_variance", "predicted_variance_exact", "measured_variance",
                          "ci_low", "ci_high"}
        assert d["ci_low"] <= d["measured_variance"] <= d["ci_high"]
    assert set(p["excess_loss"]) >= {"predicted", "measured"}
    assert 0 < p["eta_lambda_max"] < 2


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["hessian", "CKPT", "--data", "mnist"], "permsym hessian: data: unknown data spec 'mnist'"),
        (["noise", "CKPT", "--data", "digits", "--batch-size", "4", "--lr", "0.1"],
         "permsym noise: data 'digits' has (64,) features per sample; model 'mlp:3-1' cannot take them"),
        (["equilibrium", "CKPT", "--data", "linear:n=256,d=3", "--lr", "1.5", "--batch-size", "4", "--steps", "10"],
         "permsym equilibrium: lr * lambda_max must be < 2 for an equilibrium to exist; got eta*lambda_max = "),
        (["hessian", "CKPT", "--data", "linear:n=256,d=3", "--top-k", "0"],
         "permsym hessian: --top-k must be a positive integer; got 0."),
        (["noise", "CKPT", "--data", "linear:n=256,d=3", "--batch-size", "4", "--lr", "-1"],
         "permsym noise: --lr must be > 0; got -1.0."),
    ],
)
def test_bad_input_exits_2_with_one_line(linear_ckpt, capsys, args, match):
    code, out, err = _run(capsys, [linear_ckpt if a == "CKPT" else a for a in args])
    assert code == 2 and out == ""
    assert err.startswith(match), err
    assert err.count("\n") == 1


def test_train_divergence_exits_2_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "div.safetensors"
    code, _, err = _run(capsys, ["train", "mlp:8-1", "--data", "linear:n=64,d=8", "--out", str(out), "--epochs", "200",
                                 "--lr", "3.0", "--batch-size", "8"])
    assert code == 2
    assert err.startswith("permsym train: fit: the training loss must stay finite; got ")
    if out.exists():  # written only for finished epochs, so it holds finite parameters
        model = permsym.io.load(out)
        assert all(bool(p.isfinite().all()) for p in model.parameters())
