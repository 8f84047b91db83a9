"""``permsym train`` with --temperature-schedule/--noise-every/--log/--tensorboard: output and exit code 2."""

from __future__ import annotations

import json
import re
import sys

import pytest

from permsym.cli import main

BASE = ["train", "mlp:8-1", "--data", "linear:n=256,d=8", "--epochs", "4", "--batch-size", "16", "--lr", "0.05"]


def _run(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_controlled_run_writes_the_log_and_json(tmp_path, capsys):
    log = tmp_path / "noise.jsonl"
    code, out, err = _run(capsys, [*BASE, "--out", str(tmp_path / "m.safetensors"), "--temperature-schedule",
                                   "cosine:T0=2e-3,T_end=2e-4", "--noise-every", "4", "--log", str(log), "--json"])
    assert code == 0, err
    payload = json.loads(out)
    assert payload["noise"]["measurements"] == 16 and payload["noise"]["every"] == 4  # 64 steps / 4
    assert payload["controller"]["schedule"]["text"] == "cosine:T0=0.002,T_end=0.0002"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 16
    required = {"step", "lr", "trace_C", "grad_norm_sq", "temperature", "target_temperature", "lr_next"}
    assert all(required <= set(r) for r in rows)
    assert [r["step"] for r in rows] == list(range(0, 64, 4))
    assert rows[0]["target_temperature"] == pytest.approx(2e-3) and rows[-1]["target_temperature"] < 4e-4
    assert all(0.05 / 1000 <= r["lr_next"] <= 0.5 for r in rows)  # default bounds lr/1000 .. 10 lr


def test_log_alone_measures_every_10_steps(tmp_path, capsys):
    log = tmp_path / "noise.jsonl"
    code, out, _ = _run(capsys, [*BASE, "--out", str(tmp_path / "m.safetensors"), "--log", str(log)])
    assert code == 0
    assert "last noise measurement (step 60): T = " in out
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 64, 10)) and all(r["lr"] == 0.05 for r in rows)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--temperature-schedule", "exp:T0=1"], r"temperature schedule: unknown kind 'exp' in 'exp:T0=1'; expected constant:T0=\.\.\|linear"),
        (["--temperature-schedule", "linear:T0=1,Tend=0.1"], r"bad token 'Tend=0.1' for linear in .*expected constant:T0=\.\."),
        (["--temperature-schedule", "cosine:T0=0"], r"bad token 'T0=0': T0 must be a number > 0"),
        (["--noise-every", "0"], r"--noise-every must be a positive integer; got 0"),
        (["--noise-method", "hutch"], r"--noise-method must be one of auto, per-sample, micro-batch; got 'hutch'"),
        (["--lr-min", "0.01"], r"--lr-min/--lr-max bound the temperature controller; pass --temperature-schedule too"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, extra, message):
    code, out, err = _run(capsys, [*BASE, "--out", str(tmp_path / "m.safetensors"), *extra])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("permsym train: ")
    assert re.search(message, err), err
    assert not (tmp_path / "m.safetensors").exists()  # refused before any training


def test_missing_tensorboard_is_exit_code_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = _run(capsys, [*BASE, "--out", str(tmp_path / "m.safetensors"), "--tensorboard", str(tmp_path / "tb")])
    assert code == 2
    assert err == ("permsym train: TensorBoard logging needs the tensorboard package, which is not installed; "
                   "install it with: pip install 'tensorboard>=2.15,<3'\n")


def test_tensorboard_events_hold_the_logged_scalars(tmp_path, capsys):
    """With the real tensorboard package (the `tensorboard` extra): read the event file back."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard extra is not installed"
    )
    tb = tmp_path / "tb"
    code, _, err = _run(capsys, [*BASE, "--out", str(tmp_path / "m.safetensors"), "--noise-every", "2", "--tensorboard", str(tb)])
    assert code == 0, err
    acc = event_accumulator.EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"noise/temperature", "noise/trace_C", "noise/grad_norm_sq", "noise/lr"} <= tags, tags
    steps = [e.step for e in acc.Scalars("noise/temperature")]
    values = [e.value for e in acc.Scalars("noise/temperature")]
    assert steps == sorted(steps) and len(steps) >= 2 and all(v > 0 for v in values)
