"""R2: re-ordering units makes independently trained runs comparable (stability tracking)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from permsym.experiments.base import Experiment, Verdict, select

_METHODS = ("sort", "sorensen", "weight", "activation")
_SETTINGS = {
    "tiny": {"width": 16, "seeds": [0, 1, 2], "epochs": 2, "n": 400},
    "quick": {"width": 128, "seeds": [0, 1, 2, 3, 4], "epochs": 10, "n": None},
    "full": {"width": 512, "seeds": list(range(10)), "epochs": 30, "n": None},
}
_LR, _BATCH = 0.1, 32


@functools.lru_cache(maxsize=2)
def _runs(width: int, seeds: tuple[int, ...], epochs: int, n: int | None) -> tuple[tuple[torch.nn.Module, ...], tuple[torch.Tensor, torch.Tensor]]:
    """The trained seeds (vectorised ensemble, bit-equal to permsym train per seed) and the test split."""
    from permsym.data import load, train_test_split
    from permsym.ensemble import train

    X, y = load("digits" if n is None else f"digits:n={n},seed=0")
    (Xtr, ytr), test = train_test_split(X, y, test_fraction=0.2, seed=0)
    result = train(f"mlp:64-{width}-{width}-10", (Xtr, ytr), list(seeds), epochs=epochs, lr=_LR, batch_size=_BATCH)
    return tuple(result.models), test


class Reordering(Experiment):
    name = "r2_reordering"
    title = "Re-ordering for stability tracking across training runs"
    claim = (
        "Runs of the same model land on permuted copies of each other; after re-ordering the units (the paper's "
        "Sorensen heuristic, here with weight and activation matching too) the runs become comparable: "
        "parameter distances shrink and the loss barrier between runs falls."
    )
    criterion = (
        "Every method lowers the RMS distance of the runs to their consensus; weight matching also lowers the mean "
        "loss barrier along linear interpolation (test data) -> supported. Weight matching failing to lower both "
        "-> not supported; anything else -> inconclusive."
    )

    def units(self, scale: str) -> list[dict[str, Any]]:
        s = _SETTINGS[scale]
        return [{"method": m, "width": s["width"], "seeds": s["seeds"], "epochs": s["epochs"], "n": s["n"]} for m in _METHODS]

    def describe(self, scale: str) -> str:
        s = _SETTINGS[scale]
        w = s["width"]
        return (
            f"{len(s['seeds'])} seeds of MLP 64-{w}-{w}-10 trained on digits (80/20 split; {s['epochs']} epochs, lr {_LR}, "
            f"batch {_BATCH}; vectorised ensemble), then each run aligned to the first with {', '.join(_METHODS)} "
            "(sort by outgoing-weight norm; Sorensen-Dice greedy matching, our reading of the paper's heuristic; Git "
            "Re-Basin weight matching; Hungarian assignment on activation correlations). RMS distance to the consensus, "
            "fraction of units whose match similarity exceeds 0.9, loss barrier along linear interpolation on test data."
        )

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        from permsym.alignment.metrics import stability

        models, test = _runs(config["width"], tuple(config["seeds"]), config["epochs"], config["n"])
        report = stability(list(models), method=config["method"], data=test)
        records = [
            {"metric": "rms_to_consensus_before", "value": report.rms_to_consensus_before},
            {"metric": "rms_to_consensus_after", "value": report.rms_to_consensus_after},
            {"metric": "stable_unit_fraction", "value": report.stable_unit_fraction},
            {"metric": "barrier_before", "value": report.barrier_before},
            {"metric": "barrier_after", "value": report.barrier_after},
        ]
        records += [{"metric": "group_stable_fraction", "group": g["group"], "value": g["stable_fraction"]} for g in report.groups]
        return records

    def _by_method(self, records: list[dict[str, Any]], metric: str) -> dict[str, float]:
        return {r["config"]["method"]: r["value"] for r in select(records, metric=metric)}

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        before = self._by_method(records, "rms_to_consensus_before")
        after = self._by_method(records, "rms_to_consensus_after")
        b0 = self._by_method(records, "barrier_before")
        b1 = self._by_method(records, "barrier_after")
        stable = self._by_method(records, "stable_unit_fraction")
        all_lower = all(after[m] < before[m] for m in before)
        weight_ok = after["weight"] < before["weight"] and b1["weight"] < b0["weight"]
        evidence: dict[str, Any] = {"rms to consensus before alignment": next(iter(before.values()))}
        for m in before:
            evidence[f"{m}: rms after / before"] = after[m] / before[m]
            evidence[f"{m}: barrier after (before)"] = f"{b1[m]:.4g} ({b0[m]:.4g})"
            evidence[f"{m}: stable unit fraction"] = stable[m]
        verdict = "supported" if all_lower and weight_ok else ("not supported" if not weight_ok else "inconclusive")
        return Verdict(self.name, self.claim, self.criterion, verdict, evidence)

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, (ax1, ax2) = new_figure(2)
        before = self._by_method(records, "rms_to_consensus_before")
        after = self._by_method(records, "rms_to_consensus_after")
        methods = list(before)
        xs = range(len(methods))
        ax1.bar([x - 0.2 for x in xs], [before[m] for m in methods], width=0.4, label="before alignment")
        ax1.bar([x + 0.2 for x in xs], [after[m] for m in methods], width=0.4, label="after alignment")
        ax1.set_xticks(list(xs), methods)
        ax1.set(ylabel="RMS distance to consensus (parameter units)", title="Seed-to-seed parameter spread")
        ax1.legend(fontsize=8)
        b0 = self._by_method(records, "barrier_before")
        b1 = self._by_method(records, "barrier_after")
        ax2.bar([x - 0.2 for x in xs], [b0[m] for m in methods], width=0.4, label="before alignment")
        ax2.bar([x + 0.2 for x in xs], [b1[m] for m in methods], width=0.4, label="after alignment")
        ax2.set_xticks(list(xs), methods)
        ax2.set(ylabel="loss barrier (test cross-entropy, nats)", title="Linear-interpolation barrier")
        ax2.legend(fontsize=8)
        save_figure(fig, path)
