"""``permsym align | stability | track``: JSON shapes, written checkpoints, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

import permsym
from permsym.cli import main
from permsym.symmetry import example_input


@pytest.fixture
def ckpts(tmp_path):  # type: ignore[no-untyped-def]
    """Three checkpoints: A, a permuted copy of A, and an independent init B."""
    a = permsym.build("mlp:64-16-16-10", seed=0)
    s = permsym.infer_structure(a, example_input(a))
    perm = permsym.random_permutation(s, torch.Generator().manual_seed(1))
    paths = {"a": tmp_path / "a.safetensors", "pa": tmp_path / "pa.safetensors", "b": tmp_path / "b.safetensors"}
    permsym.save(a, paths["a"])
    permsym.save(permsym.apply_permutation(a, s, perm), paths["pa"])
    permsym.save(permsym.build("mlp:64-16-16-10", seed=1), paths["b"])
    return {k: str(v) for k, v in paths.items()}


def _json(capsys, argv):  # type: ignore[no-untyped-def]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_align_json_and_written_checkpoint(ckpts, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = str(tmp_path / "aligned.safetensors")
    payload = _json(capsys, ["align", ckpts["a"], ckpts["pa"], "--method", "weight", "--out", out, "--json"])
    assert {"method", "objective", "distance_before", "distance_after", "permutations"} <= set(payload)
    assert payload["method"] == "weight" and sorted(payload["permutations"]) == ["fc1", "fc2"]
    assert payload["distance_before"] > 0.1 and payload["distance_after"] < 1e-6
    a, aligned = permsym.load(ckpts["a"]), permsym.load(out)
    for k, v in a.state_dict().items():
        assert torch.equal(v, aligned.state_dict()[k]), k


def test_stability_and_track_json(ckpts, capsys) -> None:  # type: ignore[no-untyped-def]
    files = [ckpts["a"], ckpts["pa"], ckpts["b"]]
    rep = _json(capsys, ["stability", *files, "--data", "digits:n=64", "--json"])
    for key in ("rms_to_consensus_before", "rms_to_consensus_after", "stable_unit_fraction",
                "barrier_before", "barrier_after", "layers"):
        assert key in rep, key
    assert rep["rms_to_consensus_after"] < rep["rms_to_consensus_before"]
    assert len(rep["layers"]) == 6
    no_data = _json(capsys, ["stability", *files, "--json"])
    assert "barrier_before" not in no_data
    steps = _json(capsys, ["track", *files, "--json"])["steps"]
    assert len(steps) == 2 and steps[0]["aligned_drift"] < 1e-6 < steps[0]["naive_drift"]
    assert steps[0]["reordered_units"] > 0 and {"naive_drift", "aligned_drift", "reordered_units"} <= set(steps[1])


def test_stability_plot_and_tables(ckpts, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    fig = tmp_path / "s.png"
    assert main(["stability", ckpts["a"], ckpts["b"], "--plot", str(fig)]) == 0
    assert fig.stat().st_size > 1000 and "per group" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["align", "A", "B", "--method", "hungarian"],
         "permsym align: method must be one of sort, sorensen, weight, activation; got 'hungarian'."),
        (["align", "A", "B", "--method", "activation"],
         "permsym align: method 'activation' needs data (inputs to compare activations on); pass data= (CLI: --data SPEC)."),
        (["align", "A", "W"],
         "permsym align: parameter 'fc1.weight' has shape (16, 64) in the reference and (17, 64) in the "
         "other model; widths must match."),
    ],
)
def test_bad_inputs_exit_2_with_one_line(ckpts, tmp_path, capsys, argv, message) -> None:  # type: ignore[no-untyped-def]
    wide = tmp_path / "w.safetensors"
    permsym.save(permsym.build("mlp:64-17-16-10", seed=0), wide)
    files = {"A": ckpts["a"], "B": ckpts["b"], "W": str(wide)}
    assert main([files.get(x, x) for x in argv]) == 2
    err = capsys.readouterr().err
    assert err == message + "\n"
