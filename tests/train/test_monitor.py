"""NoiseMonitor: EMA smoothing, no effect on the trajectory, JSON-lines log (crash-safe), TensorBoard."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import permsym
from permsym._errors import PermsymError
from permsym.data import load_dataset
from permsym.train import JsonlLog, NoiseMonitor, TensorBoardLog, batch_noise, fit

REQUIRED = {"step", "lr", "trace_C", "grad_norm_sq", "temperature"}


def test_ema_is_bias_corrected_and_temperature_uses_the_lr():
    gen = torch.Generator().manual_seed(0)
    model = permsym.build("mlp:3-4-1", seed=0).double()
    batches = [(torch.randn(8, 3, generator=gen, dtype=torch.float64), torch.randn(8, 1, generator=gen, dtype=torch.float64)) for _ in range(4)]
    monitor = NoiseMonitor(every=1, smoothing=0.5)
    raws = [batch_noise(model, F.mse_loss, X, y).trace_C for X, y in batches]
    got = [monitor.measure(model, F.mse_loss, X, y, step=i, lr=0.2).trace_C for i, (X, y) in enumerate(batches)]
    ema, expected = 0.0, []
    for k, r in enumerate(raws, start=1):
        ema = 0.5 * ema + 0.5 * r
        expected.append(ema / (1 - 0.5**k))
    assert got[0] == pytest.approx(raws[0], rel=1e-12)
    assert got == pytest.approx(expected, rel=1e-12)
    m = monitor.measure(model, F.mse_loss, *batches[0], step=4, lr=0.2)
    assert m.temperature == pytest.approx(0.2 * m.trace_C / (2 * 8 * m.num_params), rel=1e-12)
    assert monitor.measurements == []  # measure() does not emit


def _train(monitor=None, seed=3):
    model = permsym.build("mlp:64-16-10,act=tanh", seed=0)
    hist = fit(model, load_dataset("digits:n=300"), epochs=2, lr=0.1, batch_size=32, seed=seed, monitor=monitor)
    return model, hist


def test_monitoring_does_not_change_the_trajectory():
    plain, h1 = _train()
    monitor = NoiseMonitor(every=3)
    watched, h2 = _train(monitor)
    assert h1 == h2
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), watched.parameters(), strict=True))
    assert [m.step for m in monitor.measurements] == list(range(0, 20, 3))
    assert all(m.method == "per-sample" and m.trace_C > 0 and m.lr == 0.1 for m in monitor.measurements)


def test_jsonl_log_has_the_required_keys_and_appends(tmp_path):
    path = tmp_path / "noise.jsonl"
    for _ in range(2):
        with JsonlLog(path) as log:
            _train(NoiseMonitor(every=5, sinks=[log]))
    lines = path.read_text().splitlines()
    assert len(lines) == 2 * 4  # steps 0, 5, 10, 15 per run; the second run appends
    rows = [json.loads(line) for line in lines]
    assert all(REQUIRED <= set(r) for r in rows)
    assert [r["step"] for r in rows] == [0, 5, 10, 15] * 2


def test_log_after_a_foreign_partial_line_starts_a_new_line(tmp_path):
    path = tmp_path / "noise.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "lr"')  # left by some crashed writer
    with JsonlLog(path) as log:
        log.write({"step": 2})
    assert path.read_text().splitlines()[-1] == '{"step": 2}'
    with pytest.raises(PermsymError, match=r"JsonlLog: the log .* is closed"):
        log.write({"step": 3})


_CHILD = """
import permsym
from permsym.data import load_dataset
from permsym.train import JsonlLog, NoiseMonitor, fit
log = JsonlLog({path!r})
model = permsym.build("mlp:64-32-10", seed=0)
fit(model, load_dataset("digits"), epochs=1000, lr=0.05, batch_size=32, monitor=NoiseMonitor(every=1, sinks=[log]))
"""


def test_sigkill_never_leaves_a_half_written_line(tmp_path):
    path = tmp_path / "noise.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(path=str(path))])
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 20_000):
        assert proc.poll() is None, "the child ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = path.read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) > 10 and [r["step"] for r in rows] == list(range(len(rows)))


def test_tensorboard_missing_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails like a missing package
    with pytest.raises(PermsymError, match=r"^TensorBoard logging needs the tensorboard package.*pip install 'tensorboard>=2.15,<3'$"):
        TensorBoardLog(tmp_path)


def test_tensorboard_scalars_are_written(monkeypatch, tmp_path):
    import types

    written = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            written.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    with TensorBoardLog(tmp_path) as tb:
        monitor = NoiseMonitor(every=10, sinks=[tb])
        _train(monitor)
    tags = {t[0] for t in written if t != "closed"}
    assert {"noise/trace_C", "noise/temperature", "noise/lr", "noise/grad_norm_sq"} <= tags
    temps = [(v, s) for t, v, s in (w for w in written if w != "closed") if t == "noise/temperature"]
    assert temps == [(m.temperature, m.step) for m in monitor.measurements]
    assert written[-1] == "closed"


def test_bad_monitor_options():
    with pytest.raises(ValueError, match=r"NoiseMonitor: every must be a positive integer; got 0"):
        NoiseMonitor(every=0)
    with pytest.raises(ValueError, match=r"NoiseMonitor: smoothing must be a number in \[0, 1\); got 1"):
        NoiseMonitor(smoothing=1)
    with pytest.raises(ValueError, match=r"NoiseMonitor: method must be one of auto, per-sample, micro-batch"):
        NoiseMonitor(method="hutchinson")
