r"""U1: noise-aware training. Does controlling the SGD temperature shrink the equilibrium cloud?

Three learning-rate policies at equal SGD steps and batch size (equal gradient evaluations):
fixed $\eta_0$; a step decay ($\eta_0$, $\eta_0/10$ from 50% of the steps, $\eta_0/100$ from 75%);
and :class:`~permsym.train.TemperatureControl` with a cosine target from $T_0$ (the temperature
of fixed-lr SGD at initialisation, $\eta_0\,\mathrm{tr}\,C/(2BP)$ on the training data) down
to the floor $T_0/100$ (the same factor as the step decay). A NoiseMonitor runs in every arm
(it does not change the trajectory), so $T$ over time is measured the same way for all three.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from permsym.experiments.base import Experiment, Verdict, select

METHODS = ("fixed", "step", "temperature")
_DATASETS = {
    "digits": {"spec": "digits", "arch": "mlp:64-{w}-10,act=tanh", "lr": 0.1},
    "teacher": {"spec": "teacher:mlp:10-8-1,act=tanh,n={n},noise=0.1,seed=0", "arch": "mlp:10-{w}-1,act=tanh", "lr": 0.05},
}
_SETTINGS = {
    "tiny": {"seeds": [0, 1], "width": 8, "epochs": {"digits": 2, "teacher": 4}, "n": {"digits": 400, "teacher": 256}},
    "quick": {"seeds": [0, 1, 2, 3, 4], "width": 32, "epochs": {"digits": 40, "teacher": 80}, "n": {"digits": None, "teacher": 1024}},
    "full": {"seeds": list(range(8)), "width": 64, "epochs": {"digits": 100, "teacher": 200}, "n": {"digits": None, "teacher": 2048}},
}
_BATCH, _EVERY, _FLOOR = 32, 10, 100.0
_LOSS_TOLERANCE = 0.02  # "no worse": mean test loss at most 2% above fixed-lr SGD's
_MAX_POINTS = 60  # T-over-time points kept per run


def load_split(dataset: str, n: int | None) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """80/20 train/test split of the dataset (digits: the first ``n`` after a seeded shuffle)."""
    from permsym.data import load, train_test_split

    spec = _DATASETS[dataset]["spec"]
    if dataset == "digits":
        spec = "digits" if n is None else f"digits:n={n},seed=0"
    else:
        spec = spec.format(n=n)
    X, y = load(spec)
    return train_test_split(X, y, test_fraction=0.2, seed=0)


def step_decay(lr: float, total_steps: int) -> Any:
    """$\\eta_0$, then $\\eta_0/10$ from 50% of the steps and $\\eta_0/100$ from 75%."""
    return lambda t: lr if t < total_steps // 2 else (lr / 10 if t < (3 * total_steps) // 4 else lr / 100)


def train_arm(
    arch: str, train: tuple[torch.Tensor, torch.Tensor], *, method: str, seed: int, epochs: int, lr: float,
    T0: float, batch_size: int = _BATCH, every: int = _EVERY,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one seed with one policy; return the model and its run facts (T over time, lr, HVPs)."""
    import warnings

    import permsym
    from permsym.data import loss_fn_for
    from permsym.train import NoiseMonitor, StabilityWarning, TemperatureControl, fit

    X, y = train
    loss_fn = loss_fn_for("classification" if not y.is_floating_point() else "regression")
    model = permsym.build(arch, seed=seed)
    total = epochs * math.ceil(X.shape[0] / batch_size)
    monitor = NoiseMonitor(every=every, smoothing=0.9)
    kwargs: dict[str, Any] = {}
    controller = None
    if method == "step":
        kwargs["lr_schedule"] = step_decay(lr, total)
    elif method == "temperature":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        controller = TemperatureControl(
            opt, f"cosine:T0={T0!r},T_end={T0 / _FLOOR!r}", lr_min=lr / 1000, lr_max=4 * lr, curvature_every=50,
            power_iters=5, generator=torch.Generator().manual_seed(seed),
        )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StabilityWarning)
        history = fit(model, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, loss_fn=loss_fn,
                      monitor=monitor, controller=controller, **kwargs)
    facts = {
        "seconds": time.perf_counter() - start,
        "steps": history.steps,
        "samples": history.steps * batch_size,
        "train_loss": history.losses[-1],
        "measurements": monitor.measurements,
        "hvps": controller.num_hvps if controller is not None else 0,
        "refused": sum(1 for w in caught if issubclass(w.category, StabilityWarning)),
    }
    return model, facts


def initial_temperature(arch: str, train: tuple[torch.Tensor, torch.Tensor], *, lr: float, batch_size: int = _BATCH) -> float:
    """$T_0 = \\eta_0\\,\\mathrm{tr}\\,C/(2BP)$ of the seed-0 initialisation on the full training data."""
    import permsym
    from permsym.data import loss_fn_for
    from permsym.noise import gradient_noise

    X, y = train
    model = permsym.build(arch, seed=0)
    loss_fn = loss_fn_for("classification" if not y.is_floating_point() else "regression")
    return gradient_noise(model, loss_fn, train, batch_size=batch_size, lr=lr).temperature


def aligned_spread(models: list[torch.nn.Module]) -> tuple[float, float]:
    r"""RMS distance to the consensus per parameter, $\sqrt{\frac{1}{MP}\sum_m|\theta_m-\bar\theta|^2}$,
    before and after weight-matching every model onto the first."""
    import permsym
    from permsym.alignment.metrics import rms_to_consensus

    names = [n for n, _ in models[0].named_parameters()]
    P = sum(p.numel() for p in models[0].parameters())
    raw = [dict(m.named_parameters()) for m in models]
    aligned = [raw[0]] + [dict(permsym.align(models[0], m, method="weight").model.named_parameters()) for m in models[1:]]
    before, _ = rms_to_consensus([{k: v.detach() for k, v in s.items()} for s in raw], names)
    after, _ = rms_to_consensus([{k: v.detach() for k, v in s.items()} for s in aligned], names)
    return before / math.sqrt(P), after / math.sqrt(P)


def _test_loss(model: torch.nn.Module, test: tuple[torch.Tensor, torch.Tensor]) -> float:
    from permsym.data import loss_fn_for

    X, y = test
    model.eval()
    with torch.no_grad():
        return float(loss_fn_for("classification" if not y.is_floating_point() else "regression")(model(X), y))


class NoiseAware(Experiment):
    name = "u1_noise_aware"
    title = "Noise-aware training: temperature control vs fixed and step-decayed learning rates"
    claim = (
        "The equilibrium cloud's size is set by T = eta tr(C)/(2BP); a trainer that measures T and sets the "
        "learning rate to follow a decaying target shrinks the cloud on purpose (smaller seed-to-seed spread) "
        "without losing test performance."
    )
    criterion = (
        "On both digits and teacher data, at equal SGD steps and batch size: temperature control's mean test loss "
        f"(over seeds) is at most {int(_LOSS_TOLERANCE * 100)}% above fixed-lr SGD's, and its seed-to-seed RMS "
        "spread of the final parameters after weight-matching alignment is smaller than fixed-lr SGD's. "
        "Inconclusive with fewer than 2 seeds or a missing dataset. Step decay is reported alongside, not judged."
    )

    def units(self, scale: str) -> list[dict[str, Any]]:
        s = _SETTINGS[scale]
        return [
            {"dataset": d, "method": m, "seeds": s["seeds"], "width": s["width"], "epochs": s["epochs"][d],
             "n": s["n"][d], "lr": _DATASETS[d]["lr"], "batch_size": _BATCH, "every": _EVERY}
            for d in _DATASETS
            for m in METHODS
        ]

    def describe(self, scale: str) -> str:
        s = _SETTINGS[scale]
        return (
            f"MLP 64-{s['width']}-10 (tanh) on digits and MLP 10-{s['width']}-1 (tanh) on teacher data "
            f"(teacher MLP 10-8-1, noise 0.1; n = {s['n']['teacher']}), 80/20 splits, seeds {s['seeds']} "
            f"(initialisation and shuffling), epochs {s['epochs']}, batch {_BATCH}; policies: fixed lr, step decay "
            f"(x0.1 at 50% and 75%), temperature control (cosine T from T0 = T of fixed-lr SGD at init to T0/{_FLOOR:g}, "
            f"lr in [lr/1000, 4 lr], eta*lambda_max <= 1.8 checked every 50 steps). NoiseMonitor every {_EVERY} steps in all arms."
        )

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        from permsym._threads import limited_threads

        # small models: one torch thread is fastest and avoids OpenMP spinning on a shared machine
        with limited_threads(torch_threads=1):
            return self._run_unit(config)

    def _run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        dataset, method = config["dataset"], config["method"]
        arch = _DATASETS[dataset]["arch"].format(w=config["width"])
        train, test = load_split(dataset, config["n"])
        T0 = initial_temperature(arch, train, lr=config["lr"], batch_size=config["batch_size"])
        records: list[dict[str, Any]] = [{"metric": "T0", "value": T0}]
        models = []
        for seed in config["seeds"]:
            model, facts = train_arm(arch, train, method=method, seed=seed, epochs=config["epochs"], lr=config["lr"],
                                     T0=T0, batch_size=config["batch_size"], every=config["every"])
            models.append(model)
            records += [
                {"metric": "test_loss", "seed": seed, "value": _test_loss(model, test)},
                {"metric": "train_loss", "seed": seed, "value": facts["train_loss"]},
                {"metric": "samples", "seed": seed, "value": facts["samples"]},
                {"metric": "hvps", "seed": seed, "value": facts["hvps"]},
                {"metric": "refused_lrs", "seed": seed, "value": facts["refused"]},
            ]
            ms = facts["measurements"]
            stride = max(1, math.ceil(len(ms) / _MAX_POINTS))
            for m in ms[::stride]:
                records.append({"metric": "temperature", "seed": seed, "step": m.step, "value": m.temperature,
                                "lr": m.lr, "target": m.target_temperature})
            tail = ms[len(ms) * 3 // 4 :]  # the last quarter of the run
            records.append({"metric": "final_temperature", "seed": seed, "value": statistics.fmean(m.temperature for m in tail)})
            records.append({"metric": "last_temperature", "seed": seed, "value": ms[-1].temperature})
            if method == "temperature":  # how often the controller sat at lr_max (the target unreachable)
                pinned = sum(1 for m in ms if m.lr_next is not None and m.lr_next >= 4 * config["lr"] * (1 - 1e-12))
                records.append({"metric": "at_lr_max_fraction", "seed": seed, "value": pinned / len(ms)})
        if len(models) >= 2:
            before, after = aligned_spread(models)
            records += [{"metric": "spread_raw", "value": before}, {"metric": "spread_aligned", "value": after}]
        return records

    def _mean(self, records: list[dict[str, Any]], dataset: str, method: str, metric: str) -> float | None:
        vals = [r["value"] for r in select(records, metric=metric) if r["config"]["dataset"] == dataset and r["config"]["method"] == method]
        return statistics.fmean(vals) if vals else None

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        evidence: dict[str, Any] = {}
        decisions = []
        for d in _DATASETS:
            for m in METHODS:
                for metric in ("test_loss", "spread_aligned", "spread_raw", "final_temperature", "last_temperature", "at_lr_max_fraction"):
                    value = self._mean(records, d, m, metric)
                    if value is not None:
                        evidence[f"{d}: {m} mean {metric}"] = value
            loss_f, loss_t = self._mean(records, d, "fixed", "test_loss"), self._mean(records, d, "temperature", "test_loss")
            spr_f, spr_t = self._mean(records, d, "fixed", "spread_aligned"), self._mean(records, d, "temperature", "spread_aligned")
            if None in (loss_f, loss_t, spr_f, spr_t):
                decisions.append(None)
                continue
            assert loss_f is not None and loss_t is not None and spr_f is not None and spr_t is not None
            loss_ok = loss_t <= loss_f * (1 + _LOSS_TOLERANCE)
            spread_ok = spr_t < spr_f
            evidence[f"{d}: temperature/fixed test loss"] = loss_t / loss_f
            evidence[f"{d}: temperature/fixed aligned spread"] = spr_t / spr_f
            evidence[f"{d}: test loss no worse (<= {1 + _LOSS_TOLERANCE:g}x)"] = loss_ok
            evidence[f"{d}: aligned spread smaller"] = spread_ok
            loss_s = self._mean(records, d, "step", "test_loss")
            if loss_s is not None:
                evidence[f"{d}: temperature/step-decay test loss"] = loss_t / loss_s
            decisions.append(loss_ok and spread_ok)
        if not decisions or None in decisions:
            verdict = "inconclusive"
        else:
            verdict = "supported" if all(decisions) else "not supported"
        return Verdict(self.name, self.claim, self.criterion, verdict, evidence)

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, axes = new_figure(3, width=4.4)
        colors = {"fixed": "C0", "step": "C1", "temperature": "C2"}
        seed0 = min((r["seed"] for r in select(records, metric="temperature")), default=0)
        for d, style in zip(_DATASETS, ("-", "--"), strict=True):
            for m in METHODS:
                pts = [r for r in select(records, metric="temperature", seed=seed0) if r["config"]["dataset"] == d and r["config"]["method"] == m]
                if pts:
                    axes[0].plot([r["step"] for r in pts], [r["value"] for r in pts], style, color=colors[m], label=f"{d} {m}")
        axes[0].set(xlabel="SGD step", ylabel="measured T = eta tr C / (2BP)", yscale="log", title=f"Temperature (seed {seed0})")
        axes[0].legend(fontsize=6)
        x = range(len(_DATASETS))
        for k, m in enumerate(METHODS):
            for ax, metric in ((axes[1], "test_loss"), (axes[2], "spread_aligned")):
                vals = [self._mean(records, d, m, metric) or 0.0 for d in _DATASETS]
                ax.bar([i + 0.27 * (k - 1) for i in x], vals, width=0.27, color=colors[m], label=m)
        axes[1].set(xticks=list(x), xticklabels=list(_DATASETS), ylabel="mean test loss (CE nats / mse)", yscale="log", title="Test loss")
        axes[2].set(xticks=list(x), xticklabels=list(_DATASETS), ylabel="RMS spread per parameter", title="Seed spread after alignment")
        axes[1].legend(fontsize=7)
        save_figure(fig, path)
