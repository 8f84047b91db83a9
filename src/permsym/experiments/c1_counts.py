"""C1: a net with hidden widths w_1..w_d has prod_k w_k! equivalent optima."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from permsym.experiments.base import Experiment, Verdict, select

_WIDTHS = {"tiny": [2, 4, 8], "quick": [2, 4, 8, 16, 32, 64], "full": [2, 4, 8, 16, 32, 64, 128, 256, 512]}
_DEPTHS = {"tiny": [1, 2], "quick": [1, 2, 3], "full": [1, 2, 3, 4]}
_DENSITIES = {"tiny": [0.2, 0.5], "quick": [0.05, 0.1, 0.2, 0.5], "full": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5]}
_MASK_WIDTHS = {"tiny": [8], "quick": [16, 64], "full": [16, 64, 256]}
_PERM_ARCHS = {
    "tiny": ["mlp:16-8-8-4", "convnet:1x8x8-4-6-4"],
    "quick": ["mlp:16-32-32-4,act=tanh", "convnet:1x8x8-8-16-10", "resmlp:16-32-4,blocks=2,hidden=16", "mlp:16-32-32-4,density=0.3"],
    "full": ["mlp:64-256-256-10,act=tanh", "convnet:1x8x8-16-32-10", "resmlp:64-128-10,blocks=3", "mlp:64-256-256-10,density=0.2"],
}
_N_IN = 16


class Counts(Experiment):
    name = "c1_counts"
    title = "Number of equivalent optima"
    claim = "A network with hidden widths w_1..w_d has prod_k w_k! functionally equivalent parameter points, (w!)^d for equal widths."
    criterion = (
        "For every unmasked MLP the exact automorphism count equals the formula sum log10 w_k! "
        "(|diff| < 1e-9); every random permutation keeps the function (relative error < 1e-10) "
        "while moving the parameters; row-distinct masks (density < 1) give order 1."
    )

    def units(self, scale: str) -> list[dict[str, Any]]:
        units: list[dict[str, Any]] = []
        for depth in _DEPTHS[scale]:
            for w in _WIDTHS[scale]:
                units.append({"kind": "order", "width": w, "depth": depth})
        for w in _MASK_WIDTHS[scale]:
            for rho in _DENSITIES[scale]:
                for masks in ("distinct", "bernoulli"):
                    units.append({"kind": "masked", "width": w, "density": rho, "masks": masks, "seed": 0})
        for arch in _PERM_ARCHS[scale]:
            units.append({"kind": "permute", "arch": arch, "seed": 0})
        return units

    def describe(self, scale: str) -> str:
        return (
            f"Exact counts (torch.fx structure + colour refinement + igraph BLISS) for MLPs {_N_IN}-w^d-4 "
            f"with w in {_WIDTHS[scale]}, d in {_DEPTHS[scale]}; masked MLPs at densities {_DENSITIES[scale]} with "
            "row-distinct masks (the paper's forced pre-pruning) and with plain Bernoulli masks; random "
            f"permutations of {', '.join(_PERM_ARCHS[scale])} in float64."
        )

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        import permsym
        from permsym.symmetry import count_symmetries, example_input, formula_log10_order

        if config["kind"] == "order":
            arch = f"mlp:{_N_IN}-" + "-".join([str(config["width"])] * config["depth"]) + "-4"
            model = permsym.build(arch)
            c = count_symmetries(model, example_input(model))
            return [
                {"metric": "log10_order_exact", "value": c.log10_order},
                {"metric": "log10_order_formula", "value": formula_log10_order(arch)},
            ]
        if config["kind"] == "masked":
            return self._masked(config)
        model = permsym.build(config["arch"], seed=config["seed"]).double().eval()
        x0 = example_input(model)
        s = permsym.infer_structure(model, x0)
        gen = torch.Generator().manual_seed(config["seed"])
        perms = permsym.random_permutation(s, gen)
        twin = permsym.apply_permutation(model, s, perms).eval()
        x = torch.randn(64, x0.shape[1], generator=gen, dtype=torch.float64)
        with torch.no_grad():
            y, y2 = model(x), twin(x)
        err = float((y2 - y).abs().max() / y.abs().max())
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        flat2 = torch.cat([p.detach().flatten() for p in twin.parameters()])
        moved = float((flat2 - flat).norm() / flat.norm())
        c = count_symmetries(model, x0)
        return [
            {"metric": "function_rel_error", "value": err},
            {"metric": "param_rel_distance", "value": moved},
            {"metric": "log10_order", "value": c.log10_order},
        ]

    def _masked(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        import permsym
        from permsym.symmetry import count_symmetries, example_input

        w, rho = config["width"], config["density"]
        arch = f"mlp:{_N_IN}-{w}-{w}-4,density={rho},mask_seed={config['seed']}"
        model = permsym.build(arch)
        if config["masks"] == "bernoulli":  # plain random pruning: duplicates allowed
            gen = torch.Generator().manual_seed(config["seed"])
            with torch.no_grad():
                for layer in (model.fc1, model.fc2, model.out):
                    layer.mask.copy_((torch.rand(layer.mask.shape, generator=gen) < rho).float())
                    layer.weight.mul_(layer.mask)
        c = count_symmetries(model, example_input(model))
        return [
            {"metric": "log10_order_masked", "value": c.log10_order},
            {"metric": "log10_order_unmasked", "value": c.log10_order_unmasked},
        ]

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        exact = select(records, metric="log10_order_exact")
        formula = select(records, metric="log10_order_formula")
        worst_formula = max(abs(a["value"] - b["value"]) for a, b in zip(exact, formula, strict=True))
        errors = [r["value"] for r in select(records, metric="function_rel_error")]
        moved_unmasked = [r["value"] for r in select(records, metric="param_rel_distance") if "density" not in r["config"]["arch"]]
        distinct = [r["value"] for r in records if r["metric"] == "log10_order_masked" and r["config"]["masks"] == "distinct"]
        bernoulli = [r["value"] for r in records if r["metric"] == "log10_order_masked" and r["config"]["masks"] == "bernoulli"]
        ok = worst_formula < 1e-9 and max(errors) < 1e-10 and min(moved_unmasked) > 0 and max(distinct) == 0.0
        largest = max(exact, key=lambda r: r["value"])
        evidence = {
            "max |exact - formula| (log10)": worst_formula,
            "max function relative error": max(errors),
            "min parameter relative distance (unmasked)": min(moved_unmasked),
            "max log10 order with distinct masks": max(distinct),
            "max log10 order with Bernoulli masks": max(bernoulli),
            "largest net": f"w={largest['config']['width']}, d={largest['config']['depth']}: 10^{largest['value']:.1f}",
        }
        return Verdict(self.name, self.claim, self.criterion, "supported" if ok else "not supported", evidence)

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, (ax1, ax2) = new_figure(2)
        depths = sorted({r["config"]["depth"] for r in select(records, metric="log10_order_exact")})
        for d in depths:
            rows = [r for r in select(records, metric="log10_order_exact") if r["config"]["depth"] == d]
            ax1.plot([r["config"]["width"] for r in rows], [r["value"] for r in rows], "o-", label=f"depth {d} (exact)")
            form = [r for r in select(records, metric="log10_order_formula") if r["config"]["depth"] == d]
            ax1.plot([r["config"]["width"] for r in form], [r["value"] for r in form], "k:", lw=1)
        ax1.set_xscale("log", base=2)
        ax1.set(xlabel="hidden width w", ylabel="log10 |G| (equivalent optima)", title="(w!)^d: exact (dots) = formula (dotted)")
        ax1.legend(fontsize=8)
        for masks, style in (("distinct", "o-"), ("bernoulli", "s--")):
            for w in sorted({r["config"]["width"] for r in select(records, metric="log10_order_masked")}):
                rows = [r for r in select(records, metric="log10_order_masked") if r["config"]["masks"] == masks and r["config"]["width"] == w]
                ax2.plot([r["config"]["density"] for r in rows], [r["value"] for r in rows], style, label=f"{masks} masks, w={w}")
        ax2.set(xlabel="mask density", ylabel="log10 |G| with masks", title="Pre-pruning masks vs symmetry")
        ax2.legend(fontsize=8)
        save_figure(fig, path)
