r"""R4: modular vs monolithic networks at equal parameter count.

For each size, a :class:`~permsym.layers.ModularMLP` with ``M`` modules of ``W`` units, two hidden
layers and dense blocks between ring neighbours (``links=2, density=1``) sets the parameter budget
$P$ (kept weights and biases). Matched to it, from the built models:

- ``modular-sparse``: the same modules with twice the links and inter-module blocks at density 0.5
  (about the same kept weights, random masks);
- ``dense``: the monolithic MLP ``64-H-H-10`` with the width $H$ whose count is nearest to $P$;
- ``masked``: an MLP ``64-MW-MW-10`` of the modular net's widths with row-distinct masks at the
  density whose kept count is nearest to $P$ (pre-pruning, reported alongside, not judged).

All are trained the same way on digits (plain SGD, batch 32, same epochs and seeds; the lr picked
per model on a validation split, as in R3). Training speed is the number of epochs until the
mean training loss first drops below a threshold (never wall-clock time: results are
deterministic). Redundancy is $\log_{10}|G|$ by :func:`permsym.count_symmetries` (the modular
nets are counted on their masked equivalents).
"""

from __future__ import annotations

import functools
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from permsym.experiments.base import Experiment, Verdict, combine_decisions, select
from permsym.experiments.r3_orthopoly import (
    evaluate_loss,
    load_splits,
    mean_se,
    train_with_lr_sweep,
)

MODELS = ("modular", "modular-sparse", "dense", "masked")
JUDGED = ("modular", "modular-sparse")
_SETTINGS = {
    "tiny": {"sizes": [[6, 4]], "seeds": [0, 1], "sweep_seeds": [0], "lrs": [0.1, 0.3], "epochs": 3, "n": 400},
    "quick": {"sizes": [[8, 8]], "seeds": [0, 1, 2, 3], "sweep_seeds": [0, 1], "lrs": [0.03, 0.1, 0.3, 1.0], "epochs": 30, "n": None},
    "full": {"sizes": [[8, 8], [16, 8]], "seeds": [0, 1, 2, 3, 4, 5], "sweep_seeds": [0, 1], "lrs": [0.01, 0.03, 0.1, 0.3, 1.0],
             "epochs": 100, "n": None},
}
_IN, _OUT, _LINKS, _BATCH = 64, 10, 2, 32
_TOLERANCE = 0.10  # modular mean test loss at most 10% above the dense one
_MISMATCH = 0.05  # parameter counts must match within 5%, else the comparison is inconclusive
_THRESHOLD = 0.1  # training cross-entropy (nats) that counts as "converged" for the speed measure


def effective_params(model: torch.nn.Module) -> int:
    """Trainable entries that can be non-zero: all parameters minus the zeros of ``*mask``/``*masks`` buffers."""
    total = sum(p.numel() for p in model.parameters())
    pruned = sum(int((b == 0).sum()) for n, b in model.named_buffers() if n.endswith(("mask", "masks")))
    return total - pruned


def _count(arch: str) -> int:
    import permsym

    return effective_params(permsym.build(arch))


def _modular_arch(modules: int, width: int, *, links: int, density: float) -> str:
    return f"modular:{_IN}-{_OUT},modules={modules},width={width},depth=2,links={links},wiring=ring,density={density},seed=0"


def _nearest(candidates: list[Any], count: Any, target: int) -> Any:
    return min(candidates, key=lambda c: (abs(count(c) - target), c))


@functools.lru_cache(maxsize=8)
def matched_archs(modules: int, width: int) -> dict[str, str]:
    """The four architectures of one size, their parameter counts matched to the modular net's."""
    modular = _modular_arch(modules, width, links=_LINKS, density=1.0)
    target = _count(modular)
    sparse = _modular_arch(modules, width, links=min(2 * _LINKS, modules - 1), density=0.5)

    def dense(h: int) -> str:
        return f"mlp:{_IN}-{h}-{h}-{_OUT}"

    lo, hi = 1, 4 * modules * width  # bisection on the (increasing) count of 64-H-H-10
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _count(dense(mid)) <= target else (lo, mid)
    h = _nearest([lo, hi], lambda c: _count(dense(c)), target)
    hidden = modules * width

    def masked(step: int) -> str:
        return f"mlp:{_IN}-{hidden}-{hidden}-{_OUT},density={step / 100:g},mask_seed=0"

    lo, hi = 1, 100  # density in steps of 0.01; the kept count grows with it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _count(masked(mid)) <= target else (lo, mid)
    rho = _nearest([lo, hi], lambda c: _count(masked(c)), target)
    return {"modular": modular, "modular-sparse": sparse, "dense": dense(h), "masked": masked(rho)}


class ModularVsMonolithic(Experiment):
    name = "r4_modular"
    title = "Modular vs monolithic networks at equal parameter count: test loss, training speed, symmetry"
    claim = (
        "Modular, bio-inspired architectures (small dense modules, sparse wiring between them) carry less "
        "permutative redundancy than a monolithic dense network while keeping its performance."
    )
    criterion = (
        f"On digits, for every size and both modular variants (dense ring blocks; sparse blocks at density 0.5), "
        f"against the dense MLP with the nearest parameter count (mismatch <= {int(_MISMATCH * 100)}%, lr picked per "
        f"model on a validation split): supported if the modular mean test loss over seeds is at most "
        f"{1 + _TOLERANCE:g}x the dense one and its log10 |G| is smaller; not supported if log10 |G| is not smaller, "
        f"or the loss exceeds {1 + _TOLERANCE:g}x the dense one by more than the standard error of that margin "
        f"sqrt(se_mod^2 + ({1 + _TOLERANCE:g} se_dense)^2); inconclusive if it exceeds it by less, with < 2 seeds, "
        "or a parameter mismatch above the bound. Overall: supported if every comparison is, not supported if any "
        "is not, else inconclusive. The masked MLP and the training speed are reported, not judged."
    )

    def units(self, scale: str) -> list[dict[str, Any]]:
        s = _SETTINGS[scale]
        units = []
        for modules, width in s["sizes"]:
            archs = matched_archs(modules, width)
            for model in MODELS:
                units.append({"size": f"{modules}x{width}", "model": model, "arch": archs[model], "epochs": s["epochs"],
                              "n": s["n"], "lrs": s["lrs"], "seeds": s["seeds"], "sweep_seeds": s["sweep_seeds"],
                              "batch_size": _BATCH})
        return units

    def describe(self, scale: str) -> str:
        s = _SETTINGS[scale]
        sizes = ", ".join(f"{m} modules x {w} units" for m, w in s["sizes"])
        archs = "; ".join(f"{u['model']}: {u['arch']}" for u in self.units(scale))
        return (
            f"Scikit-learn digits (n = {s['n'] or 1797}; 20% test, 20% of the rest for validation). Sizes: {sizes}. "
            f"Architectures (parameter counts matched to the modular net's kept weights and biases): {archs}. "
            f"Plain SGD, batch {_BATCH}, {s['epochs']} epochs, lr per model from {s['lrs']} by validation loss over "
            f"seeds {s['sweep_seeds']}, then seeds {s['seeds']}. Records: test cross-entropy and accuracy, training "
            f"loss per epoch, epochs until the training loss is below {_THRESHOLD} nats, log10 |G| (igraph, on the "
            "masked equivalent for modular nets) and both parameter counts (kept and stored)."
        )

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        from permsym._threads import limited_threads

        # small models: one torch thread is fastest and keeps runs bit-identical whatever the runner's jobs
        with limited_threads(torch_threads=1):
            return self._run_unit(config)

    def _run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        import permsym
        from permsym.symmetry import count_symmetries

        arch, n = config["arch"], config["n"]
        fresh = permsym.build(arch, seed=0)
        count = count_symmetries(fresh, torch.zeros(1, _IN))
        records: list[dict[str, Any]] = [
            {"metric": "num_params", "value": effective_params(fresh)},
            {"metric": "num_params_stored", "value": sum(p.numel() for p in fresh.parameters())},
            {"metric": "log10_order", "value": count.log10_order},
            {"metric": "log10_order_unmasked", "value": count.log10_order_unmasked},
        ]
        splits = load_splits("digits" if n is None else f"digits:n={n},seed=0")
        lr, val, runs = train_with_lr_sweep(arch, splits, lrs=config["lrs"], seeds=config["seeds"],
                                            sweep_seeds=config["sweep_seeds"], epochs=config["epochs"],
                                            batch_size=config["batch_size"])
        records += [{"metric": "val_loss", "lr": k, "value": v} for k, v in val.items() if v is not None]
        records += [{"metric": "lr_diverged", "lr": k, "value": 1} for k, v in val.items() if v is None]
        if lr is None:
            return records
        records.append({"metric": "chosen_lr", "value": lr})
        X, y = splits["test"]
        for seed, run in runs.items():
            losses = run["losses"]
            records += [{"metric": "train_loss", "seed": seed, "epoch": e + 1, "value": v} for e, v in enumerate(losses)]
            reached = [e + 1 for e, v in enumerate(losses) if v <= _THRESHOLD]
            records.append({"metric": "epochs_to_threshold", "seed": seed, "value": reached[0] if reached else config["epochs"],
                            "reached": bool(reached), "threshold": _THRESHOLD})
            records.append({"metric": "diverged", "seed": seed, "value": int(run["diverged"])})
            test = evaluate_loss(run["model"], splits["test"])
            if math.isfinite(test):
                records.append({"metric": "test_loss", "seed": seed, "value": test})
            with torch.no_grad():
                records.append({"metric": "test_accuracy", "seed": seed, "value": float((run["model"](X).argmax(1) == y).float().mean())})
        return records

    # ---- judging -------------------------------------------------------------------------------

    def _values(self, records: list[dict[str, Any]], size: str, model: str, metric: str) -> list[Any]:
        return [r["value"] for r in select(records, metric=metric) if r["config"]["size"] == size and r["config"]["model"] == model]

    def _one(self, records: list[dict[str, Any]], size: str, model: str, metric: str) -> Any:
        vals = self._values(records, size, model, metric)
        return vals[0] if vals else None

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        evidence: dict[str, Any] = {}
        decisions: list[str] = []
        sizes = sorted({r["config"]["size"] for r in records})
        for size in sizes:
            for model in MODELS:
                losses = self._values(records, size, model, "test_loss")
                acc = self._values(records, size, model, "test_accuracy")
                speed = self._values(records, size, model, "epochs_to_threshold")
                reached = [r["reached"] for r in select(records, metric="epochs_to_threshold")
                           if r["config"]["size"] == size and r["config"]["model"] == model]
                if not losses:
                    evidence[f"{size} {model}"] = "no result (every lr diverged)"
                    continue
                mean, se = mean_se(losses)
                evidence[f"{size} {model}"] = (
                    f"{self._one(records, size, model, 'num_params')} params, log10|G| "
                    f"{self._one(records, size, model, 'log10_order'):.2f}, test loss {mean:.4g} +- {se:.2g}, "
                    f"accuracy {statistics.fmean(acc):.4f}, lr {self._one(records, size, model, 'chosen_lr')}, "
                    f"epochs to loss <= {_THRESHOLD}: {statistics.fmean(speed):.1f} ({sum(reached)}/{len(reached)} reached)"
                )
            dense_losses = self._values(records, size, "dense", "test_loss")
            dense_params = self._one(records, size, "dense", "num_params")
            dense_order = self._one(records, size, "dense", "log10_order")
            for model in JUDGED:
                losses = self._values(records, size, model, "test_loss")
                params = self._one(records, size, model, "num_params")
                order = self._one(records, size, model, "log10_order")
                if len(losses) < 2 or len(dense_losses) < 2 or None in (params, dense_params, order, dense_order):
                    decisions.append("inconclusive")
                    continue
                (m, se_m), (d, se_d) = mean_se(losses), mean_se(dense_losses)
                mismatch = abs(params - dense_params) / dense_params
                margin = m - (1 + _TOLERANCE) * d
                se = math.hypot(se_m, (1 + _TOLERANCE) * se_d)
                if order >= dense_order or margin > se:
                    decision = "not supported"
                elif mismatch > _MISMATCH or margin > 0:
                    decision = "inconclusive"
                else:
                    decision = "supported"
                evidence[f"{size} {model} vs dense: test loss ratio"] = m / d
                evidence[f"{size} {model} vs dense: parameter mismatch"] = mismatch
                evidence[f"{size} {model} vs dense: log10|G| {order:.2f} vs {dense_order:.2f}"] = order < dense_order
                evidence[f"{size} {model} vs dense: decision"] = decision
                decisions.append(decision)
        return Verdict(self.name, self.claim, self.criterion, combine_decisions(decisions), evidence)

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, axes = new_figure(3, width=4.4)
        sizes = sorted({r["config"]["size"] for r in records})
        colors = {m: f"C{i}" for i, m in enumerate(MODELS)}
        styles = ["-", "--", ":"]
        for k, size in enumerate(sizes):
            for model in MODELS:
                rows = [r for r in select(records, metric="train_loss") if r["config"]["size"] == size and r["config"]["model"] == model]
                epochs = sorted({r["epoch"] for r in rows})
                curve = [statistics.fmean(r["value"] for r in rows if r["epoch"] == e) for e in epochs]
                params = self._one(records, size, model, "num_params")
                axes[0].plot(epochs, curve, styles[k % 3], color=colors[model], label=f"{size} {model} ({params} params)")
        axes[0].axhline(_THRESHOLD, color="k", lw=0.8, ls=":")
        axes[0].set(xlabel="epoch", ylabel="training cross-entropy (nats)", yscale="log", title="Convergence (mean over seeds)")
        axes[0].legend(fontsize=6)
        labels, x = [], 0.0
        for size in sizes:
            for model in MODELS:
                losses = self._values(records, size, model, "test_loss")
                if losses:
                    mean, se = mean_se(losses)
                    axes[1].bar(x, mean, yerr=se, capsize=3, color=colors[model])
                    axes[1].plot([x] * len(losses), losses, "k.", ms=3)
                order = self._one(records, size, model, "log10_order")
                axes[2].bar(x, order if order is not None else 0.0, color=colors[model])
                if order is not None:
                    axes[2].annotate(f"{order:.1f}", (x, order), ha="center", va="bottom", fontsize=8)
                labels.append((x, f"{size}\n{model}"))
                x += 1
            x += 0.5
        for ax in axes[1:]:
            ax.set_xticks([p for p, _ in labels])
            ax.set_xticklabels([t for _, t in labels], fontsize=7)
        axes[1].set(ylabel="test cross-entropy (nats)", title="Test loss (bars: mean +- se; dots: seeds)")
        axes[2].set(ylabel="log10 |G| (equivalent parameter points)", title="Symmetry group order")
        save_figure(fig, path)
