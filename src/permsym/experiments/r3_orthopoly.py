r"""R3: ortho-polynomial activations vs ReLU/tanh/GELU MLPs at equal width and equal training.

Every activation gets the same MLP widths, the same plain SGD (fixed lr, batch 32, same epochs)
and the same seeds. The learning rate is the only thing tuned, per activation and dataset, on a
validation split: each lr of a small grid is run with the ``sweep_seeds`` on the fit split, the lr
with the lowest mean validation loss (among those where no run diverged) is kept, and the other
seeds are trained at that lr. All final models are trained on the fit split (train minus
validation) and scored on the held-out test split.

Seed-to-seed spread of the learned function (no alignment needed) is
$\frac{1}{N}\sum_{i=1}^{N} \sum_k \widehat{\mathrm{Var}}_s\,[f_s(x_i)]_k$ over the test inputs
$x_i$ and seeds $s$ (unbiased variance over seeds; $f$ = the regression output, or the softmax
probabilities for classification). The aligned parameter spread (RMS distance per parameter to
the consensus after weight matching onto seed 0) is reported alongside, not judged: activations
with different parameterisations are not comparable on it.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch

from permsym.experiments.base import Experiment, Verdict, combine_decisions, select

BASELINES = ("relu", "tanh", "gelu")
POLYNOMIALS = ("legendre8", "chebyshev8", "hermite6:per_unit")
ACTIVATIONS = BASELINES + POLYNOMIALS
_DATASETS = {
    "regression": {"spec": "synthetic-regression:n={n},d=8,noise=0.3,seed=0", "in": 8, "out": 1},
    "digits": {"spec": "digits", "in": 64, "out": 10},
}
_SETTINGS = {
    "tiny": {"seeds": [0, 1], "sweep_seeds": [0], "lrs": [0.03, 0.1], "width": 16, "epochs": 3,
             "n": {"regression": 300, "digits": 400}},
    "quick": {"seeds": [0, 1, 2, 3], "sweep_seeds": [0, 1], "lrs": [0.01, 0.03, 0.1, 0.3, 1.0], "width": 48, "epochs": 20,
              "n": {"regression": 1000, "digits": None}},
    "full": {"seeds": [0, 1, 2, 3, 4, 5], "sweep_seeds": [0, 1], "lrs": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
             "width": 128, "epochs": 100, "n": {"regression": 4000, "digits": None}},
}
_BATCH = 32
_TEST_FRACTION, _VAL_FRACTION = 0.2, 0.2


def load_splits(spec: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``fit`` / ``val`` / ``test`` splits of a data spec: 20% test, then 20% of the rest for validation."""
    from permsym.data import load, train_test_split

    X, y = load(spec)
    train, test = train_test_split(X, y, test_fraction=_TEST_FRACTION, seed=0)
    fit_part, val = train_test_split(*train, test_fraction=_VAL_FRACTION, seed=1)
    return {"fit": fit_part, "val": val, "test": test}


def evaluate_loss(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean loss of ``model`` (eval mode) on ``data``: mse for float targets, cross-entropy for labels."""
    from permsym.data import loss_fn_for

    X, y = data
    model.eval()
    with torch.no_grad():
        return float(loss_fn_for("regression" if y.is_floating_point() else "classification")(model(X), y))


def _train(arch: str, data: tuple[torch.Tensor, torch.Tensor], *, seed: int, lr: float, epochs: int,
           batch_size: int) -> dict[str, Any]:
    """One run: the model, its per-epoch training losses, and whether it diverged (then the model
    holds the parameters of the last finished epoch and the curve stops there)."""
    import permsym
    from permsym.train import TrainingDiverged, fit

    model = permsym.build(arch, seed=seed)
    losses: list[float] = []
    diverged = False
    try:
        fit(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
            on_epoch=lambda _epoch, loss: losses.append(loss))
    except TrainingDiverged:
        diverged = True
    return {"model": model, "losses": losses, "diverged": diverged}


def train_with_lr_sweep(
    arch: str, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], *, lrs: list[float], seeds: list[int],
    sweep_seeds: list[int], epochs: int, batch_size: int = _BATCH,
) -> tuple[float | None, dict[float, float | None], dict[int, dict[str, Any]]]:
    """Pick the lr with the lowest mean validation loss over ``sweep_seeds`` (runs that diverged or end
    non-finite rule their lr out), then train the remaining ``seeds`` at it (sweep runs are reused).

    Returns ``(lr, {lr: mean validation loss or None}, {seed: run})``; ``lr`` is ``None`` when every lr failed.
    """
    sweep: dict[tuple[float, int], dict[str, Any]] = {}
    val: dict[float, float | None] = {}
    for lr in lrs:
        losses = []
        for seed in sweep_seeds:
            run = _train(arch, splits["fit"], seed=seed, lr=lr, epochs=epochs, batch_size=batch_size)
            sweep[lr, seed] = run
            losses.append(evaluate_loss(run["model"], splits["val"]) if not run["diverged"] else math.inf)
        mean = statistics.fmean(losses)
        val[lr] = mean if math.isfinite(mean) else None
    finite = [lr for lr in lrs if val[lr] is not None]
    if not finite:
        return None, val, {}
    best = min(finite, key=lambda lr: val[lr] or math.inf)
    runs = {}
    for seed in seeds:
        runs[seed] = sweep.get((best, seed)) or _train(arch, splits["fit"], seed=seed, lr=best, epochs=epochs, batch_size=batch_size)
    return best, val, runs


def function_spread(models: list[torch.nn.Module], X: torch.Tensor, *, classification: bool) -> float:
    r"""$\frac1N \sum_i \sum_k \widehat{\mathrm{Var}}_s [f_s(x_i)]_k$: mean over inputs of the unbiased
    variance across models of the output (softmax probabilities for classification), summed over outputs."""
    outs = []
    with torch.no_grad():
        for m in models:
            m.eval()
            out = m(X).double()
            outs.append(torch.softmax(out, dim=1) if classification else out)
    stack = torch.stack(outs)  # (S, N, K)
    return float(stack.var(dim=0, unbiased=True).sum(dim=1).mean())


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, se


class OrthoPolyActivations(Experiment):
    name = "r3_orthopoly"
    title = "Ortho-polynomial vs ReLU/tanh/GELU activations: convergence, test loss, seed-to-seed spread"
    claim = (
        "Ortho-polynomial activations (learnable coefficients on an orthonormal basis) give a better "
        "approximation with less redundancy than fixed activations: at equal width and training they "
        "reach a lower loss and learn a more reproducible function."
    )
    criterion = (
        "Per dataset (noisy synthetic regression, digits), with the lr picked per activation on a validation "
        "split: let P be the polynomial activation (legendre8, chebyshev8, hermite6:per_unit) and B the baseline "
        "(relu, tanh, gelu) with the lowest mean test loss over seeds, d = mean(P) - mean(B), "
        "se = sqrt(se_P^2 + se_B^2). Supported on a dataset if d < -se (P better beyond the seed-to-seed standard "
        "error) and P's function-space seed spread is smaller than B's; not supported if d > se or P's spread is "
        "larger; inconclusive otherwise (|d| <= se with a smaller spread). Overall: supported if supported on both "
        "datasets, not supported if not supported on either, else inconclusive (also with < 2 seeds or a missing arm)."
    )

    def units(self, scale: str) -> list[dict[str, Any]]:
        s = _SETTINGS[scale]
        return [
            {"dataset": d, "act": act, "width": s["width"], "epochs": s["epochs"], "n": s["n"][d], "lrs": s["lrs"],
             "seeds": s["seeds"], "sweep_seeds": s["sweep_seeds"], "batch_size": _BATCH}
            for d in _DATASETS
            for act in ACTIVATIONS
        ]

    def describe(self, scale: str) -> str:
        s = _SETTINGS[scale]
        w = s["width"]
        return (
            f"MLPs IN-{w}-{w}-OUT with act in {', '.join(ACTIVATIONS)} (polynomials: default 'gauss' domain map, "
            f"variance-preserving init, learnable coefficients) on noisy synthetic regression (d = 8, noise 0.3, "
            f"n = {s['n']['regression']}) and scikit-learn digits (n = {s['n']['digits'] or 1797}); 20% test, then 20% of "
            f"the rest for validation. Plain SGD, batch {_BATCH}, {s['epochs']} epochs at a fixed lr; the lr is picked "
            f"per activation and dataset from {s['lrs']} by mean validation loss over seeds {s['sweep_seeds']} "
            f"(diverged lrs excluded), then seeds {s['seeds']} are trained at it. Records: training loss per epoch, "
            "test loss, function-space seed spread (mean over test inputs of the variance across seeds of the "
            "output; softmax probabilities for digits) and the RMS parameter spread after weight matching."
        )

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        from permsym._threads import limited_threads

        # small models: one torch thread is fastest and keeps runs bit-identical whatever the runner's jobs
        with limited_threads(torch_threads=1):
            return self._run_unit(config)

    def _run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        dataset, act, w = config["dataset"], config["act"], config["width"]
        d = _DATASETS[dataset]
        n = config["n"]
        spec = d["spec"].format(n=n) if dataset != "digits" else ("digits" if n is None else f"digits:n={n},seed=0")
        splits = load_splits(spec)
        arch = f"mlp:{d['in']}-{w}-{w}-{d['out']},act={act}"
        lr, val, runs = train_with_lr_sweep(arch, splits, lrs=config["lrs"], seeds=config["seeds"],
                                            sweep_seeds=config["sweep_seeds"], epochs=config["epochs"],
                                            batch_size=config["batch_size"])
        records: list[dict[str, Any]] = [
            {"metric": "val_loss", "lr": k, "value": v} for k, v in val.items() if v is not None
        ]
        records += [{"metric": "lr_diverged", "lr": k, "value": 1} for k, v in val.items() if v is None]
        if lr is None:
            return records
        records.append({"metric": "chosen_lr", "value": lr})
        good = []
        for seed, run in runs.items():
            records += [{"metric": "train_loss", "seed": seed, "epoch": e + 1, "value": v} for e, v in enumerate(run["losses"])]
            records.append({"metric": "diverged", "seed": seed, "value": int(run["diverged"])})
            test = evaluate_loss(run["model"], splits["test"])
            if math.isfinite(test):
                records.append({"metric": "test_loss", "seed": seed, "value": test})
                good.append(run["model"])
            if dataset == "digits":
                X, y = splits["test"]
                with torch.no_grad():
                    acc = float((run["model"](X).argmax(1) == y).float().mean())
                records.append({"metric": "test_accuracy", "seed": seed, "value": acc})
        model0 = runs[config["seeds"][0]]["model"]
        records.append({"metric": "num_params", "value": sum(p.numel() for p in model0.parameters())})
        if len(good) >= 2:
            X = splits["test"][0]
            records.append({"metric": "function_spread", "value": function_spread(good, X, classification=dataset == "digits")})
            from permsym.experiments.u1_noise_aware import aligned_spread

            raw, aligned = aligned_spread(good)
            records += [{"metric": "param_spread_raw", "value": raw}, {"metric": "param_spread_aligned", "value": aligned}]
        return records

    # ---- judging -------------------------------------------------------------------------------

    def _values(self, records: list[dict[str, Any]], dataset: str, act: str, metric: str) -> list[float]:
        return [r["value"] for r in select(records, metric=metric) if r["config"]["dataset"] == dataset and r["config"]["act"] == act]

    def _summary(self, records: list[dict[str, Any]], dataset: str, act: str) -> dict[str, Any] | None:
        losses = self._values(records, dataset, act, "test_loss")
        spread = self._values(records, dataset, act, "function_spread")
        if len(losses) < 2 or not spread:
            return None
        mean, se = mean_se(losses)
        return {"mean": mean, "se": se, "spread": spread[0]}

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        evidence: dict[str, Any] = {}
        decisions: list[str] = []
        for dataset in _DATASETS:
            summaries = {act: self._summary(records, dataset, act) for act in ACTIVATIONS}
            for act in ACTIVATIONS:
                s = summaries[act]
                lr = self._values(records, dataset, act, "chosen_lr")
                div = (sum(self._values(records, dataset, act, "diverged")), len(self._values(records, dataset, act, "lr_diverged")))
                if s is None:
                    evidence[f"{dataset}: {act}"] = "no result (every lr diverged or < 2 seeds)"
                    continue
                aligned = self._values(records, dataset, act, "param_spread_aligned")
                final = [r["value"] for r in select(records, metric="train_loss")
                         if r["config"]["dataset"] == dataset and r["config"]["act"] == act and r["epoch"] == r["config"]["epochs"]]
                evidence[f"{dataset}: {act}"] = (
                    f"test loss {s['mean']:.4g} +- {s['se']:.2g}, final train loss "
                    f"{statistics.fmean(final) if final else float('nan'):.3g}, function spread {s['spread']:.3g}, "
                    f"aligned parameter spread {aligned[0] if aligned else float('nan'):.3g}, lr {lr[0] if lr else None}, "
                    f"diverged runs {div[0]}, diverged lrs {div[1]}"
                )
            polys = {a: s for a in POLYNOMIALS if (s := summaries[a]) is not None}
            bases = {a: s for a in BASELINES if (s := summaries[a]) is not None}
            if not polys or not bases:
                decisions.append("inconclusive")
                continue
            p = min(polys, key=lambda a: polys[a]["mean"])
            b = min(bases, key=lambda a: bases[a]["mean"])
            P, B = polys[p], bases[b]
            diff, se = P["mean"] - B["mean"], math.hypot(P["se"], B["se"])
            smaller_spread = P["spread"] < B["spread"]
            if diff > se or not smaller_spread:
                decision = "not supported"
            elif diff < -se:
                decision = "supported"
            else:
                decision = "inconclusive"
            evidence[f"{dataset}: best polynomial / best baseline"] = f"{p} / {b}"
            evidence[f"{dataset}: test loss difference (poly - baseline) and its se"] = [diff, se]
            evidence[f"{dataset}: test loss ratio (poly / baseline)"] = P["mean"] / B["mean"]
            evidence[f"{dataset}: function spread ratio (poly / baseline)"] = P["spread"] / B["spread"] if B["spread"] > 0 else None
            evidence[f"{dataset}: decision"] = decision
            decisions.append(decision)
        return Verdict(self.name, self.claim, self.criterion, combine_decisions(decisions), evidence)

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, axes = new_figure(4, width=4.2)
        colors = {a: f"C{i}" for i, a in enumerate(ACTIVATIONS)}
        for ax, dataset, unit in ((axes[0], "regression", "mse"), (axes[1], "digits", "cross-entropy, nats")):
            for act in ACTIVATIONS:
                rows = [r for r in select(records, metric="train_loss") if r["config"]["dataset"] == dataset and r["config"]["act"] == act]
                epochs = sorted({r["epoch"] for r in rows})
                curve = [statistics.fmean(r["value"] for r in rows if r["epoch"] == e) for e in epochs]
                style = "--" if act in POLYNOMIALS else "-"
                ax.plot(epochs, curve, style, color=colors[act], label=act)
            ax.set(xlabel="epoch", ylabel=f"training loss ({unit})", yscale="log", title=f"Convergence: {dataset} (mean over seeds)")
            ax.legend(fontsize=7)
        x = list(range(len(ACTIVATIONS)))
        for k, dataset in enumerate(_DATASETS):
            means, ses, spreads = [], [], []
            for act in ACTIVATIONS:
                s = self._summary(records, dataset, act)
                means.append(s["mean"] if s else float("nan"))
                ses.append(s["se"] if s else 0.0)
                spreads.append(s["spread"] if s else float("nan"))
            offs = [i + 0.4 * (k - 0.5) for i in x]
            axes[2].bar(offs, means, width=0.4, yerr=ses, capsize=2, color=f"C{k}", label=dataset)
            axes[3].bar(offs, spreads, width=0.4, color=f"C{k}", label=dataset)
        axes[2].axhline(0.3**2, color="C0", lw=0.8, ls=":", label="regression noise variance")
        axes[2].set(xticks=x, ylabel="test loss (mse / cross-entropy nats)", yscale="log", title="Test loss (bars: se over seeds)")
        axes[3].set(xticks=x, ylabel="mean Var over seeds of output", yscale="log", title="Function-space seed spread")
        for ax in axes[2:]:
            ax.set_xticklabels(ACTIVATIONS, rotation=30, fontsize=7)
            ax.legend(fontsize=7)
        save_figure(fig, path)
