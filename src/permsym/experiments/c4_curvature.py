"""C4: Hessian eigenvalues concentrate near zero as the network grows."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from permsym.experiments.base import Experiment, Verdict, select

_SETTINGS = {
    "tiny": {"widths": [4, 16], "seeds": [0], "epochs": 3, "n": 256, "probes": 2, "steps": 30},
    "quick": {"widths": [8, 16, 32, 64, 128], "seeds": [0, 1], "epochs": 40, "n": 512, "probes": 4, "steps": 60},
    "full": {"widths": [8, 16, 32, 64, 128, 256], "seeds": [0, 1, 2], "epochs": 200, "n": 1024, "probes": 8, "steps": 100},
}
_EPSILONS = (1e-3, 1e-2)
_TEACHER = "mlp:8-16-2,act=tanh"


class CurvatureVsWidth(Experiment):
    name = "c4_curvature"
    title = "Hessian spectrum vs width"
    claim = "As the network grows, the Hessian eigenvalues at an optimum concentrate near zero (d log lambda / dn > 0 in the paper's Eq. 33 sense): most directions become flat."
    criterion = (
        "The spectral mass with |lambda| < 0.01 lambda_max (stochastic Lanczos quadrature) at the widest net "
        "exceeds that at the narrowest for every seed, and its Spearman correlation with width is >= 0.8 "
        "(mean over seeds); a negative correlation is 'not supported', anything else 'inconclusive'."
    )

    def units(self, scale: str) -> list[dict[str, Any]]:
        s = _SETTINGS[scale]
        return [
            {"width": w, "seed": seed, "epochs": s["epochs"], "n": s["n"], "probes": s["probes"], "steps": s["steps"]}
            for w in s["widths"]
            for seed in s["seeds"]
        ]

    def describe(self, scale: str) -> str:
        s = _SETTINGS[scale]
        return (
            f"Student MLPs 8-w-w-2 (tanh), w in {s['widths']}, trained by SGD ({s['epochs']} epochs, lr 0.05, batch 32) "
            f"on {s['n']} noisy samples of a random teacher {_TEACHER}; Hessian of the full-batch mse at the end point: "
            f"spectral density by stochastic Lanczos quadrature ({s['probes']} probes x {s['steps']} steps), top "
            f"eigenvalue by Lanczos, fraction of spectral mass below {', '.join(map(str, _EPSILONS))} x lambda_max. Seeds {s['seeds']}."
        )

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        import torch.nn.functional as F

        import permsym
        from permsym.curvature import hessian_top_eigenvalues, spectral_density
        from permsym.data import load
        from permsym.train import fit

        w, seed = config["width"], config["seed"]
        X, y = load(f"teacher:{_TEACHER},n={config['n']},noise=0.1,seed=0", dtype=torch.float64)
        model = permsym.build(f"mlp:8-{w}-{w}-2,act=tanh", seed=seed).double()
        history = fit(model, (X, y), epochs=config["epochs"], lr=0.05, batch_size=32, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        top = hessian_top_eigenvalues(model, F.mse_loss, (X, y), 1, tol=1e-6, generator=gen)
        dens = spectral_density(model, F.mse_loss, (X, y), num_probes=config["probes"], num_steps=config["steps"], generator=gen)
        lmax = top.eigenvalues[0]
        records = [
            {"metric": "final_train_loss", "value": history.losses[-1]},
            {"metric": "lambda_max", "value": lmax},
            {"metric": "num_params", "value": top.num_params},
        ]
        for eps in _EPSILONS:
            mass = float(dens.weights[dens.nodes.abs() < eps * lmax].sum())
            records.append({"metric": "fraction_near_zero", "epsilon": eps, "value": mass})
        grid = torch.linspace(-0.1 * lmax, 1.05 * lmax, 120, dtype=torch.float64)
        from permsym.curvature.density import broadened_density

        values = broadened_density(dens.nodes, dens.weights, sigma=0.01 * lmax, grid=grid)
        records += [{"metric": "density", "x": float(x / lmax), "value": float(v * lmax)} for x, v in zip(grid, values, strict=True)]
        return records

    def _fractions(self, records: list[dict[str, Any]], seed: int, eps: float = 1e-2) -> list[tuple[int, float]]:
        rows = [r for r in select(records, metric="fraction_near_zero", epsilon=eps) if r["config"]["seed"] == seed]
        return sorted((r["config"]["width"], r["value"]) for r in rows)

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        from scipy.stats import spearmanr

        seeds = sorted({r["config"]["seed"] for r in records})
        rhos, grows = [], []
        evidence: dict[str, Any] = {}
        for seed in seeds:
            pairs = self._fractions(records, seed)
            widths, fracs = [p[0] for p in pairs], [p[1] for p in pairs]
            rho = float(spearmanr(widths, fracs).statistic) if len(set(fracs)) > 1 else 0.0
            rhos.append(rho)
            grows.append(fracs[-1] > fracs[0])
            evidence[f"seed {seed}: fraction near zero by width"] = {str(w): round(f, 4) for w, f in pairs}
        mean_rho = statistics.fmean(rhos)
        evidence["Spearman(width, fraction) mean over seeds"] = mean_rho
        lmax = {r["config"]["width"]: r["value"] for r in select(records, metric="lambda_max") if r["config"]["seed"] == seeds[0]}
        evidence["lambda_max by width (seed 0)"] = {str(k): round(v, 4) for k, v in sorted(lmax.items())}
        if all(grows) and mean_rho >= 0.8:
            verdict = "supported"
        elif mean_rho < 0:
            verdict = "not supported"
        else:
            verdict = "inconclusive"
        return Verdict(self.name, self.claim, self.criterion, verdict, evidence)

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, (ax1, ax2) = new_figure(2)
        seed = min(r["config"]["seed"] for r in records)
        for w in sorted({r["config"]["width"] for r in records}):
            rows = [r for r in select(records, metric="density") if r["config"]["width"] == w and r["config"]["seed"] == seed]
            ax1.plot([r["x"] for r in rows], [r["value"] for r in rows], label=f"w={w}")
        ax1.set(xlabel="eigenvalue / lambda_max", ylabel="density x lambda_max", yscale="log", title="Hessian spectral density (SLQ)")
        ax1.set_ylim(1e-3, 1e2)
        ax1.legend(fontsize=8)
        for eps in _EPSILONS:
            seeds = sorted({r["config"]["seed"] for r in records})
            for s in seeds:
                pairs = self._fractions(records, s, eps)
                ax2.plot([p[0] for p in pairs], [p[1] for p in pairs], "o-", alpha=0.7, label=f"|lambda| < {eps} lambda_max, seed {s}")
        ax2.set_xscale("log", base=2)
        ax2.set(xlabel="hidden width w", ylabel="fraction of spectral mass", title="Concentration near zero")
        ax2.legend(fontsize=7)
        save_figure(fig, path)
