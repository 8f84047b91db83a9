"""C5: equilibrium regions around permuted copies of an optimum overlap as the network grows."""

from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Any

import torch

from permsym.experiments.base import Experiment, Verdict, select

_TEACHER = "teacher:mlp:4-6-1,act=tanh,n=256,noise=0.3,seed=0"
_SETTINGS = {
    "tiny": {"widths": [4, 8], "seeds": [0], "epochs": 20, "steps": 600, "check_every": 100},
    "quick": {"widths": [4, 8, 16, 32, 64], "seeds": [0, 1], "epochs": 150, "steps": 4000, "check_every": 100},
    "full": {"widths": [4, 8, 16, 32, 64, 128, 256], "seeds": [0, 1, 2], "epochs": 400, "steps": 40000, "check_every": 500},
}
_SAMPLE_EVERY = 5  # keep every 5th iterate for the radii
_ETA_LAMBDA, _BATCH = 0.5, 2  # lr = _ETA_LAMBDA / lambda_max: the same stability margin at every width


def unit_slices(state: dict[str, torch.Tensor], structure: Any) -> dict[str, torch.Tensor]:
    """Per group, an ``(n, m)`` matrix: row ``i`` = every parameter unit ``i`` owns (in, bias, out)."""
    out = {}
    for group in structure.groups:
        parts = [state[m.name].detach().to(torch.float64).movedim(m.axis, 0).reshape(group.size, -1) for m in group.members]
        out[group.name] = torch.cat(parts, dim=1)
    return out


def pair_overlap(star: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Ghost distances $d_{ij} = |u_{ij}|$ and equilibrium radii $r_{ij}$ along every swap direction.

    With unit slices $s_i$ at the optimum and iterate offsets $\delta_i$, swapping $i, j$ moves
    $\theta^*$ by $u_{ij}$ with $|u_{ij}|^2 = 2|s_i - s_j|^2$ (DESIGN.md 2.4) and
    $(\theta - \theta^*) \cdot u_{ij} = -(\delta_i - \delta_j) \cdot (s_i - s_j)
    = -(a_i + a_j - M_{ij} - M_{ji})$ with $a_i = \delta_i \cdot s_i$, $M = \delta S^\top$: all pairs
    at once. $r_{ij}$ is the standard deviation of that projection over the iterates, divided by $|u_{ij}|$.

    Args:
        star: ``(n, m)`` unit slices at the optimum. deltas: ``(T, n, m)`` offsets of T iterates.
    """
    diff = star[:, None, :] - star[None, :, :]
    d = (2 * diff.square().sum(-1)).sqrt()
    a = (deltas * star).sum(-1)  # (T, n)
    M = deltas @ star.T  # (T, n, n)
    proj = -(a[:, :, None] + a[:, None, :] - M - M.transpose(1, 2))
    r = proj.std(dim=0, correction=0) / d.clamp_min(1e-300)
    return d, r


class Overlap(Experiment):
    name = "c5_overlap"
    title = "Overlap of equilibrium regions of permuted optima"
    claim = (
        "As the network grows, the cloud of SGD iterates around each optimum reaches the permuted copies (ghosts) "
        "of that optimum: the equilibrium regions overlap and SGD visits other basins."
    )
    criterion = (
        "The overlap ratio min_ij d_ij / r_ij (ghost distance over the equilibrium radius along that swap direction, "
        "r from the spread of SGD iterates; the most reachable ghost) falls with width (Spearman <= -0.8, mean over seeds), and unit swaps "
        "(non-identity Hungarian alignments of the iterate to the optimum) occur at the widest net at least as often "
        "as at the narrowest and at least once. A rising ratio (Spearman >= 0.8) is 'not supported'; else 'inconclusive'."
    )

    def units(self, scale: str) -> list[dict[str, Any]]:
        s = _SETTINGS[scale]
        return [
            {"width": w, "seed": seed, "epochs": s["epochs"], "steps": s["steps"], "check_every": s["check_every"], "eta_lambda": _ETA_LAMBDA, "batch_size": _BATCH}
            for w in s["widths"]
            for seed in s["seeds"]
        ]

    def describe(self, scale: str) -> str:
        s = _SETTINGS[scale]
        return (
            f"MLPs 4-w-1 (tanh), w in {s['widths']}, trained on {_TEACHER} ({s['epochs']} epochs), then {s['steps']} steps of "
            f"SGD at stationarity (lr = {_ETA_LAMBDA} / lambda_max, i.e. the same stability margin at every width; batch {_BATCH}, with replacement). For every pair of units: "
            "ghost distance d_ij = |u_ij| and equilibrium radius r_ij = standard deviation of the iterates along u_ij; the overlap ratio is "
            "the smallest d_ij / r_ij; every "
            f"{s['check_every']} steps the iterate is aligned to the optimum by weight matching and alignments that bring it closer to a ghost than to the optimum are counted. Seeds {s['seeds']}."
        )

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        import permsym
        from permsym.curvature import hessian_top_eigenvalues
        from permsym.curvature.functional import FlatLoss
        from permsym.data import load
        from permsym.equilibrium import run_sgd
        from permsym.train import fit

        w, seed = config["width"], config["seed"]
        X, y = load(_TEACHER, dtype=torch.float64)
        model = permsym.build(f"mlp:4-{w}-1,act=tanh", seed=seed).double()
        fit(model, (X, y), epochs=config["epochs"], lr=0.05, batch_size=16, seed=seed)
        lam = hessian_top_eigenvalues(
            model, torch.nn.functional.mse_loss, (X, y), 1, tol=1e-6, generator=torch.Generator().manual_seed(seed)
        ).eigenvalues[0]
        lr = config["eta_lambda"] / lam
        from permsym.symmetry import example_input, infer_structure

        structure = infer_structure(model, example_input(model))
        theta_star = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        star = unit_slices(model.state_dict(), structure)
        samples: dict[str, list[torch.Tensor]] = {g: [] for g in star}
        swaps: list[int] = []
        probe = copy.deepcopy(model)
        burn_in = config["steps"] // 5

        def on_step(t: int, theta: torch.Tensor, _full_loss: Any) -> None:
            if t < burn_in or (t + 1) % _SAMPLE_EVERY:
                return
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(theta, probe.parameters())
            for g, sl in unit_slices(probe.state_dict(), structure).items():
                samples[g].append(sl - star[g])
            if (t + 1) % config["check_every"] == 0:
                result = permsym.align(model, probe, method="weight")
                moved = sum(int((p != torch.arange(len(p))).sum()) for p in result.permutations.values())
                swaps.append(moved if result.distance_after < result.distance_before else 0)

        flat = FlatLoss(model, torch.nn.functional.mse_loss, (X, y))
        gen = torch.Generator().manual_seed(seed)
        run_sgd(flat, theta_star, lr=lr, batch_size=config["batch_size"], steps=config["steps"], generator=gen, on_step=on_step)
        records: list[dict[str, Any]] = [{"metric": "lr", "value": lr}, {"metric": "lambda_max", "value": lam}]
        best = None
        for g in star:
            d, r = pair_overlap(star[g], torch.stack(samples[g]))
            ratio = d / r
            ratio.fill_diagonal_(float("inf"))
            d_off = d + torch.diag(torch.full((d.shape[0],), float("inf"), dtype=d.dtype))
            k = int(torch.argmin(ratio))
            i, j = divmod(k, d.shape[0])
            nearest = int(torch.argmin(d_off))
            cand = {"ratio": float(ratio[i, j]), "d": float(d[i, j]), "r": float(r[i, j]), "nearest_d": float(d_off.flatten()[nearest]),
                    "nearest_r": float(r.flatten()[nearest])}
            if best is None or cand["ratio"] < best["ratio"]:
                best = cand
        assert best is not None
        records += [
            {"metric": "overlap_ratio", "value": best["ratio"]},
            {"metric": "ghost_distance", "value": best["d"]},
            {"metric": "equilibrium_radius", "value": best["r"]},
            {"metric": "nearest_ghost_distance", "value": best["nearest_d"]},
            {"metric": "nearest_ghost_ratio", "value": best["nearest_d"] / best["nearest_r"]},
            {"metric": "swap_checks", "value": len(swaps)},
            {"metric": "checks_with_swaps", "value": sum(1 for n in swaps if n > 0)},
            {"metric": "units_swapped_mean", "value": statistics.fmean(swaps) if swaps else 0.0},
        ]
        return records

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        from scipy.stats import spearmanr

        seeds = sorted({r["config"]["seed"] for r in records})
        rhos = []
        evidence: dict[str, Any] = {}
        for seed in seeds:
            rows = sorted((r["config"]["width"], r["value"]) for r in select(records, metric="overlap_ratio") if r["config"]["seed"] == seed)
            rhos.append(float(spearmanr([w for w, _ in rows], [v for _, v in rows]).statistic))
            evidence[f"seed {seed}: d/r by width"] = {str(w): round(v, 3) for w, v in rows}
        swaps = {}
        for r in select(records, metric="checks_with_swaps"):
            swaps.setdefault(r["config"]["width"], []).append(r["value"])
        total = {w: sum(v) for w, v in sorted(swaps.items())}
        evidence["alignments with unit swaps, by width (all seeds)"] = {str(w): n for w, n in total.items()}
        mean_rho = statistics.fmean(rhos)
        evidence["Spearman(width, d/r) mean over seeds"] = mean_rho
        widths = sorted(total)
        swaps_ok = total[widths[-1]] >= total[widths[0]] and total[widths[-1]] > 0
        if mean_rho <= -0.8 and swaps_ok:
            verdict = "supported"
        elif mean_rho >= 0.8:
            verdict = "not supported"
        else:
            verdict = "inconclusive"
        return Verdict(self.name, self.claim, self.criterion, verdict, evidence)

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, (ax1, ax2) = new_figure(2)
        for seed in sorted({r["config"]["seed"] for r in records}):
            for metric, style in (("nearest_ghost_distance", "o-"), ("equilibrium_radius", "s--")):
                rows = sorted((r["config"]["width"], r["value"]) for r in select(records, metric=metric) if r["config"]["seed"] == seed)
                ax1.plot([w for w, _ in rows], [v for _, v in rows], style, label=f"{metric.replace('_', ' ')}, seed {seed}")
            rows = sorted((r["config"]["width"], r["value"]) for r in select(records, metric="overlap_ratio") if r["config"]["seed"] == seed)
            ax2.plot([w for w, _ in rows], [v for _, v in rows], "o-", label=f"min d/r, seed {seed}")
        ax1.set_xscale("log", base=2)
        ax1.set(yscale="log", xlabel="hidden width w", ylabel="parameter-space distance", title="Nearest ghost; radius toward the most reachable ghost")
        ax1.legend(fontsize=7)
        ax2.set_xscale("log", base=2)
        ax2.axhline(1.0, color="k", lw=0.8, ls=":")
        ax2.set(yscale="log", xlabel="hidden width w", ylabel="d / r (1 = regions touch)", title="Overlap ratio")
        ax2.legend(fontsize=7)
        save_figure(fig, path)
