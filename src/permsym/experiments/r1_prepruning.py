"""R1: forced pre-pruning (fixed row-distinct masks) breaks the symmetry; what does it cost?"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from permsym.experiments.base import Experiment, Verdict, select

_SETTINGS = {
    "tiny": {"densities": [0.2, 1.0], "seeds": [0], "width": 16, "epochs": 2, "n": 400},
    "quick": {"densities": [0.05, 0.1, 0.2, 0.5, 1.0], "seeds": [0, 1], "width": 64, "epochs": 15, "n": None},
    "full": {"densities": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0], "seeds": [0, 1, 2, 3, 4], "width": 256, "epochs": 40, "n": None},
}
_LR, _BATCH = 0.1, 32
_TOLERANCE = 0.10  # best masked test loss within 10% of the dense one


def _connections(model: torch.nn.Module) -> int:
    """Kept weights: mask entries where masked, all weight entries otherwise."""
    masks = [b for n, b in model.named_buffers() if n.endswith("mask")]
    if masks:
        return int(sum(int(m.sum()) for m in masks))
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


class PrePruning(Experiment):
    name = "r1_prepruning"
    title = "Pre-pruning sweep: density vs symmetry, test loss and training speed"
    claim = (
        "Forced pre-pruning with fixed binary masks whose units have distinct connections breaks the "
        "permutative symmetry, reducing redundancy without giving up the network's performance."
    )
    criterion = (
        "Every masked density (< 1) has exact group order 1 (log10 |G| = 0), and the best masked density's "
        f"mean test loss on digits is within {int(_TOLERANCE * 100)}% of the dense network's."
    )

    def units(self, scale: str) -> list[dict[str, Any]]:
        s = _SETTINGS[scale]
        return [
            {"density": rho, "seed": seed, "width": s["width"], "epochs": s["epochs"], "n": s["n"], "lr": _LR, "batch_size": _BATCH}
            for rho in s["densities"]
            for seed in s["seeds"]
        ]

    def describe(self, scale: str) -> str:
        s = _SETTINGS[scale]
        w = s["width"]
        return (
            f"MLP 64-{w}-{w}-10 on scikit-learn digits (80/20 split), masked at densities {s['densities']} "
            f"(1.0 = dense) with row-distinct masks, seeds {s['seeds']}, {s['epochs']} epochs of SGD "
            f"(lr {_LR}, batch {_BATCH}); exact group order by igraph, test cross-entropy and accuracy, "
            "training loss per epoch (training speed)."
        )

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        import torch.nn.functional as F

        import permsym
        from permsym.data import load, train_test_split
        from permsym.symmetry import count_symmetries, example_input
        from permsym.train import fit

        w, rho = config["width"], config["density"]
        arch = f"mlp:64-{w}-{w}-10" + (f",density={rho},mask_seed={config['seed']}" if rho < 1 else "")
        spec = "digits" if config["n"] is None else f"digits:n={config['n']},seed=0"
        X, y = load(spec)
        (Xtr, ytr), (Xte, yte) = train_test_split(X, y, test_fraction=0.2, seed=0)
        model = permsym.build(arch, seed=config["seed"])
        count = count_symmetries(model, example_input(model))
        history = fit(model, (Xtr, ytr), epochs=config["epochs"], lr=config["lr"], batch_size=config["batch_size"], seed=config["seed"])
        model.eval()
        with torch.no_grad():
            logits = model(Xte)
            test_loss = float(F.cross_entropy(logits, yte))
            accuracy = float((logits.argmax(1) == yte).float().mean())
        records = [
            {"metric": "log10_order", "value": count.log10_order},
            {"metric": "log10_order_unmasked", "value": count.log10_order_unmasked},
            {"metric": "test_loss", "value": test_loss},
            {"metric": "test_accuracy", "value": accuracy},
            {"metric": "num_connections", "value": _connections(model)},
        ]
        records += [{"metric": "train_loss", "epoch": e + 1, "value": v} for e, v in enumerate(history.losses)]
        return records

    def _mean_by_density(self, records: list[dict[str, Any]], metric: str) -> dict[float, float]:
        densities = sorted({r["config"]["density"] for r in records})
        return {d: statistics.fmean(r["value"] for r in select(records, metric=metric) if r["config"]["density"] == d) for d in densities}

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        orders = self._mean_by_density(records, "log10_order")
        losses = self._mean_by_density(records, "test_loss")
        acc = self._mean_by_density(records, "test_accuracy")
        masked = [d for d in orders if d < 1]
        dense_loss = losses.get(1.0)
        best = min(masked, key=lambda d: losses[d]) if masked else None
        evidence: dict[str, Any] = {f"log10 |G| at density {d}": orders[d] for d in orders}
        evidence.update({f"test loss at density {d}": losses[d] for d in losses})
        evidence.update({f"test accuracy at density {d}": acc[d] for d in acc})
        if best is None or dense_loss is None:
            return Verdict(self.name, self.claim, self.criterion, "inconclusive", evidence)
        ratio = losses[best] / dense_loss
        evidence["best masked density"] = best
        evidence["best masked / dense test loss"] = ratio
        ok = all(orders[d] == 0.0 for d in masked) and ratio <= 1 + _TOLERANCE
        return Verdict(self.name, self.claim, self.criterion, "supported" if ok else "not supported", evidence)

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, (ax1, ax2, ax3) = new_figure(3, width=4.2)
        orders = self._mean_by_density(records, "log10_order")
        ax1.plot(list(orders), list(orders.values()), "o-")
        ax1.set(xlabel="mask density (1 = dense)", ylabel="log10 |G|", title="Symmetry group order")
        for d in sorted({r["config"]["density"] for r in records}):
            vals = [r["value"] for r in select(records, metric="test_loss") if r["config"]["density"] == d]
            ax2.plot([d] * len(vals), vals, "k.", alpha=0.5)
        losses = self._mean_by_density(records, "test_loss")
        ax2.plot(list(losses), list(losses.values()), "o-")
        ax2.set(xlabel="mask density", ylabel="test cross-entropy (nats)", title="Test loss (dots: seeds)")
        for d in sorted({r["config"]["density"] for r in records}):
            curve = [r for r in select(records, metric="train_loss") if r["config"]["density"] == d and r["config"]["seed"] == records[0]["config"]["seed"]]
            ax3.plot([r["epoch"] for r in curve], [r["value"] for r in curve], label=f"density {d}")
        ax3.set(xlabel="epoch", ylabel="training loss (nats)", yscale="log", title="Training speed")
        ax3.legend(fontsize=7)
        save_figure(fig, path)
