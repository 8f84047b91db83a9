"""Temperature schedules, the controller's bounds and stability check, and T tracking a target."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import permsym
from permsym._errors import PermsymError
from permsym.curvature import dense_hessian
from permsym.data import load_dataset
from permsym.noise import gradient_noise
from permsym.train import (
    NoiseMonitor,
    StabilityWarning,
    TemperatureControl,
    TemperatureSchedule,
    fit,
    parse_schedule,
    power_lambda_max,
)

FORM = r"expected constant:T0=\.\.\|linear:T0=\.\.,T_end=\.\.\|cosine:T0=\.\.,T_end=\.\."


def test_schedule_values():
    lin = parse_schedule("linear:T0=1e-3,T_end=1e-4")
    cos = parse_schedule("cosine:T0=1e-3, T_end=1e-4")
    assert parse_schedule("constant:T0=2e-3")(7, total_steps=10) == 2e-3
    assert lin(0, total_steps=10) == 1e-3 and lin(10, total_steps=10) == pytest.approx(1e-4)
    assert lin(5, total_steps=10) == pytest.approx(5.5e-4)
    assert cos(5, total_steps=10) == pytest.approx(5.5e-4) and cos(10, total_steps=10) == pytest.approx(1e-4)
    assert cos(2, total_steps=10) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(0.2 * math.pi)))
    assert lin(20, total_steps=10) == pytest.approx(1e-4)  # clipped at the floor
    assert str(cos) == "cosine:T0=0.001,T_end=0.0001"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("exp:T0=1", r"unknown kind 'exp'"),
        ("constant", r"constant needs T0=\.\."),
        ("constant:T=1", r"bad token 'T=1' for constant"),
        ("constant:T0=1,T_end=0.5", r"bad token 'T_end=0.5' for constant"),
        ("linear:T0=1", r"linear is missing T_end=\.\."),
        ("linear:T0=abc,T_end=1", r"bad token 'T0=abc': T0 must be a number > 0"),
        ("cosine:T0=1,T_end=-1", r"bad token 'T_end=-1': T_end must be a number > 0"),
        ("cosine:T0=1,T0=2", r"T0 given twice"),
        ("cosine:T0=1e-3,T_end=1e-2", r"bad token 'T_end=0.01': T_end must be <= T0 = 0.001"),
    ],
)
def test_bad_schedules_name_the_token_and_the_form(text, message):
    with pytest.raises(PermsymError, match=rf"^temperature schedule: {message}.*{FORM}\.$"):
        parse_schedule(text)


def _linear_run(target, *, epochs=30, every=5, seed=0):
    ds = load_dataset("linear:n=512,d=8,noise=0.5", dtype=torch.float64)
    model = permsym.build("mlp:8-1", seed=0).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = NoiseMonitor(every=every, smoothing=0.9)
    ctl = TemperatureControl(opt, f"constant:T0={target}", lr_min=1e-4, lr_max=1.0, curvature_every=50,
                             generator=torch.Generator().manual_seed(0))
    fit(model, ds, epochs=epochs, lr=0.05, batch_size=16, seed=seed, monitor=monitor, controller=ctl)
    return model, ds, monitor, ctl


def test_constant_target_is_held_on_linear_data():
    target = 2e-3
    model, ds, monitor, ctl = _linear_run(target)
    after = [m for m in monitor.measurements if m.step >= 300]  # burn-in: the first 300 of 960 steps
    assert len(after) > 100
    ratios = [m.temperature / target for m in after]
    # the monitor's own (smoothed) T, at the lr used since the previous measurement
    assert all(0.8 < r < 1.2 for r in ratios), (min(ratios), max(ratios))
    assert all(m.target_temperature == target for m in after)
    # an independent check: the exact full-data T at the final lr (gradient_noise, every sample)
    exact = gradient_noise(model, F.mse_loss, ds, batch_size=16, lr=ctl.lr).temperature
    assert abs(exact / target - 1) < 0.2, exact
    assert ctl.num_refused == 0 and ctl.lambda_max is not None


def test_power_iteration_matches_the_dense_hessian():
    ds = load_dataset("linear:n=256,d=6,noise=0.5", dtype=torch.float64)
    model = permsym.build("mlp:6-3-1,act=tanh", seed=0).double()
    lam, v, used = power_lambda_max(model, F.mse_loss, ds.X, ds.y, iters=300, rtol=1e-13,
                                    generator=torch.Generator().manual_seed(0))
    H = dense_hessian(model, F.mse_loss, ds)
    top = float(torch.linalg.eigvalsh(H).abs().max())
    # power iteration converged (rtol 1e-13): the Rayleigh quotient agrees to 1e-6 relative
    assert abs(lam - top) / top < 1e-6, (lam, top)
    assert used <= 300 and abs(float(v.norm()) - 1) < 1e-12


def test_controller_stays_within_its_bounds():
    model = permsym.build("mlp:3-1")
    ctl = TemperatureControl(torch.optim.SGD(model.parameters(), lr=0.1), "cosine:T0=1e-2,T_end=1e-5",
                             lr_min=1e-3, lr_max=0.5)
    for trace in [0.0, 1e-12, 1e-6, 1e-3, 1.0, 1e3, 1e9]:
        for step in (0, 50, 100):
            eta = ctl.lr_for(trace_C=trace, batch_size=8, num_params=4, step=step, total_steps=100)
            assert 1e-3 <= eta <= 0.5, (trace, step, eta)
    # and during training: every lr the controller set and every lr used is within the bounds
    # (lr_max = 1 is above 2 / lambda_max = 0.70 here, so the stability cap refuses it)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, monitor, ctl = _linear_run(5.0, epochs=3)  # a huge target pushes against lr_max
    refused = [str(w.message) for w in caught if w.category is StabilityWarning]
    assert refused and all(re.search(r"refused lr = [\d.]+ at step \d+: eta\*lambda_max = [\d.]+ >= 2 \(lambda_max", r) for r in refused)
    lrs = [m.lr_next for m in monitor.measurements] + [m.lr for m in monitor.measurements[1:]]
    assert all(1e-4 <= x <= 1.0 for x in lrs) and max(lrs) > 0.1
    assert all(m.lr_next * m.lambda_max < 2 for m in monitor.measurements)


def test_unstable_learning_rates_are_refused_with_a_warning():
    ds = load_dataset("linear:n=256,d=4,noise=0.5", dtype=torch.float64)
    model = permsym.build("mlp:4-1", seed=0).double()
    top = float(torch.linalg.eigvalsh(dense_hessian(model, F.mse_loss, ds)).max())
    ctl = TemperatureControl(torch.optim.SGD(model.parameters(), lr=0.01), "constant:T0=10", lr_min=1e-4,
                             lr_max=10.0, power_iters=100, generator=torch.Generator().manual_seed(0))
    lam = ctl.track_curvature(model, F.mse_loss, ds.X, ds.y, step=0)
    # a few warm-startable iterations stop at rtol 1e-3 per step, about 0.5% below lambda_max here;
    # the margin max_sharpness = 1.8 (10% below 2) absorbs that, so 2% is the budget
    assert abs(lam - top) / top < 2e-2
    with pytest.warns(StabilityWarning, match=r"refused lr = 10 at step 3: eta\*lambda_max = [\d.]+ >= 2 .*using lr = "):
        eta = ctl.lr_for(trace_C=1e-3, batch_size=8, num_params=5, step=3, total_steps=10)
    assert eta * top < 2 and eta == pytest.approx(1.8 / lam)
    assert ctl.num_refused == 1
    # if even lr_min is unstable there is no stable choice: the controller stops with an error
    tight = TemperatureControl(torch.optim.SGD(model.parameters(), lr=0.01), "constant:T0=10",
                               lr_min=1.0, lr_max=10.0, power_iters=100)
    with pytest.raises(PermsymError, match=r"no stable learning rate within the bounds: lr_min \* lambda_max"):
        tight.track_curvature(model, F.mse_loss, ds.X, ds.y, step=0)


def test_controller_wraps_adam():
    ds = load_dataset("linear:n=256,d=4", dtype=torch.float64)
    model = permsym.build("mlp:4-1", seed=0).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = NoiseMonitor(every=4)
    ctl = TemperatureControl(opt, "constant:T0=1e-4", lr_min=1e-5, lr_max=0.1, curvature_every=None)
    fit(model, ds, epochs=2, lr=0.01, batch_size=16, seed=0, monitor=monitor, controller=ctl)
    for m in monitor.measurements:
        expected = min(max(2 * 16 * 5 * 1e-4 / m.trace_C, 1e-5), 0.1)
        assert m.lr_next == pytest.approx(expected, rel=1e-12)
    assert opt.param_groups[0]["lr"] == monitor.measurements[-1].lr_next


def test_step_decay_schedule_and_fit_errors():
    ds = load_dataset("linear:n=64,d=4", dtype=torch.float64)
    seen = []

    def decay(step):
        seen.append(step)
        return 0.05 if step < 8 else 0.005

    model = permsym.build("mlp:4-1", seed=0).double()
    fit(model, ds, epochs=2, lr=0.05, batch_size=8, lr_schedule=decay)
    assert seen == list(range(16))
    ref = permsym.build("mlp:4-1", seed=0).double()
    fit(ref, ds, epochs=2, lr=0.05, batch_size=8)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters(), strict=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctl = TemperatureControl(opt, "constant:T0=1e-3", lr_min=1e-3, lr_max=1.0)
    with pytest.raises(ValueError, match=r"fit: a TemperatureControl needs a NoiseMonitor"):
        fit(model, ds, epochs=1, lr=0.1, batch_size=8, controller=ctl)
    with pytest.raises(ValueError, match=r"fit: optimizer must be the one the TemperatureControl wraps"):
        fit(model, ds, epochs=1, lr=0.1, batch_size=8, controller=ctl, monitor=NoiseMonitor(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"fit: lr_schedule must return a finite number > 0; got 0.0 at step 0"):
        fit(model, ds, epochs=1, lr=0.1, batch_size=8, lr_schedule=lambda s: 0.0)
    with pytest.raises(PermsymError, match=r"TemperatureSchedule: T_end must be a number with 0 < T_end <= T0"):
        TemperatureSchedule("linear", T0=1.0)
    with pytest.raises(ValueError, match=r"TemperatureControl: bounds must satisfy 0 < lr_min <= lr_max"):
        TemperatureControl(opt, "constant:T0=1", lr_min=1.0, lr_max=0.1)
