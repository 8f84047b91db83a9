#!/usr/bin/env python3
"""Weight matching side by side: permsym vs a NumPy/SciPy transcription vs PyPI ``rebasin``.

Cases (MLP 784-W-W-W-10, ReLU, permsym.build init):
  planted  B = pi(A) + N(0, (0.01 std(A_k))^2) per tensor; exact recovery is checked.
  random   A and B independently initialised (seeds 0 and 1).
Every backend is scored the same way: J = sum_k <A_k, aligned_B_k> over all state tensors in
float64, the output change of the aligned B (must be ~0: a permutation keeps the function),
and exact recovery of the planted permutation. Repeats are interleaved across backends.
Thread pools of torch and BLAS are both capped with ``--threads`` (threadpoolctl).

Also: the spread of J over sweep orders (permsym ``generator`` seeds, and best-of-k with
``restarts=k``), an independent pair at 784-4096-4096-10 (permsym only), and, with
``--ensemble``, 32 seeds of an MLP 64-128-128-10 trained as a vmapped ensemble vs a loop.

Usage (from the repository root, in a venv that has permsym and, optionally, rebasin==0.0.47):
  python benchmarks/bench_alignment.py --backends permsym,permsym-identity,transcription,rebasin --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits
from torch import nn

import permsym
from permsym.symmetry import example_input

# --------------------------------------------------------------------------------------
# A plain NumPy/SciPy transcription of Git Re-Basin weight matching (Ainsworth et al. 2023,
# Algorithm 1), written for this benchmark: random group order per sweep, one LAP per group,
# stop after a sweep without progress.
# --------------------------------------------------------------------------------------


def mlp_axes(model: nn.Module) -> dict[str, tuple[str | None, ...]]:
    """tensor -> group per axis, for a Sequential of Linear layers (hidden groups P0, P1, ...)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    axes: dict[str, tuple[str | None, ...]] = {}
    for i, n in enumerate(names):
        out = f"P{i}" if i < len(names) - 1 else None
        axes[f"{n}.weight"] = (out, f"P{i - 1}" if i > 0 else None)
        axes[f"{n}.bias"] = (out,)
    return axes


def _take(w: np.ndarray, groups: tuple[str | None, ...], perm: dict[str, np.ndarray], skip: int = -1) -> np.ndarray:
    for ax, g in enumerate(groups):
        if g is not None and ax != skip:
            w = np.take(w, perm[g], axis=ax)
    return w


def transcription(pa: dict[str, np.ndarray], pb: dict[str, np.ndarray], axes, *, seed: int = 0, max_iter: int = 100):
    by_group: dict[str, list[tuple[str, int]]] = {}
    for k, gs in axes.items():
        for ax, g in enumerate(gs):
            if g is not None:
                by_group.setdefault(g, []).append((k, ax))
    sizes = {g: pa[lst[0][0]].shape[lst[0][1]] for g, lst in by_group.items()}
    perm = {g: np.arange(n) for g, n in sizes.items()}
    rng = np.random.default_rng(seed)
    names = sorted(sizes)
    sweeps = 0
    for _ in range(max_iter):
        sweeps += 1
        progress = False
        for g in (names[i] for i in rng.permutation(len(names))):
            n = sizes[g]
            cost = np.zeros((n, n))
            for k, ax in by_group[g]:
                a = np.moveaxis(pa[k], ax, 0).reshape(n, -1)
                b = np.moveaxis(_take(pb[k], axes[k], perm, skip=ax), ax, 0).reshape(n, -1)
                cost += a @ b.T
            _, cols = linear_sum_assignment(cost, maximize=True)
            if cost[np.arange(n), cols].sum() > cost[np.arange(n), perm[g]].sum() + 1e-12:
                perm[g], progress = cols, True
        if not progress:
            break
    return {k: _take(v, axes[k], perm) for k, v in pb.items()}, sweeps


# --------------------------------------------------------------------------------------
# backends: (model_a, model_b) -> (aligned_b, info); models are fresh copies each call
# --------------------------------------------------------------------------------------


def run_permsym(a: nn.Module, b: nn.Module, seed: int = 0, restarts: int = 1, init: str = "forward"):
    r = permsym.align(a, b, method="weight", restarts=restarts, generator=torch.Generator().manual_seed(seed),
                      init=init)
    return r.model, {"sweeps": r.sweeps}


def run_permsym_identity(a: nn.Module, b: nn.Module, seed: int = 0, restarts: int = 1):
    """permsym's Algorithm 1 from the identity (``init="identity"``), for comparison."""
    return run_permsym(a, b, seed=seed, restarts=restarts, init="identity")


def run_transcription(a: nn.Module, b: nn.Module, seed: int = 0):
    axes = mlp_axes(a)
    pa = {k: v.detach().double().numpy() for k, v in a.state_dict().items()}
    pb = {k: v.detach().double().numpy() for k, v in b.state_dict().items()}
    new, sweeps = transcription(pa, pb, axes, seed=seed)
    b.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.float32) for k, v in new.items()})
    return b, {"sweeps": sweeps}


def run_rebasin(a: nn.Module, b: nn.Module, seed: int = 0):
    from rebasin import PermutationCoordinateDescent

    torch.manual_seed(seed)  # rebasin draws its group order from the global RNG
    pcd = PermutationCoordinateDescent(a, b, example_input(a, batch=16))
    pcd.rebasin()
    return b, {}


BACKENDS = {"permsym": run_permsym, "permsym-identity": run_permsym_identity, "transcription": run_transcription,
            "rebasin": run_rebasin}


BACKENDS_USED: set[str] = set()


def objective(a: nn.Module, b: nn.Module) -> float:
    """The one score of every backend: sum_k <A_k, B_k> over all state tensors (weights and biases
    each once), float64. (rebasin 0.0.47 descends on another sum: its cost matrices hold every
    Linear's weight-row and bias terms 4 times and the next layer's column term twice, see
    ``rebasin_cost_weights``; its result is still scored here with this J.)"""
    sb = b.state_dict()
    return float(sum(torch.vdot(v.double().reshape(-1), sb[k].double().reshape(-1)) for k, v in a.state_dict().items()))


def planted_pair(arch: str, noise: float = 0.01):
    a = permsym.build(arch, seed=0)
    s = permsym.infer_structure(a, example_input(a))
    gen = torch.Generator().manual_seed(1000)
    perms = permsym.random_permutation(s, gen)
    b = permsym.apply_permutation(a, s, perms)
    with torch.no_grad():
        for t in b.state_dict().values():
            t.add_(noise * t.std() * torch.randn(t.shape, generator=gen))
    truth = permsym.apply_permutation(b, s, {g: torch.argsort(p) for g, p in perms.items()})
    return a, b, truth


def case(name: str, a: nn.Module, b: nn.Module, truth: nn.Module | None, backends: list[str], repeats: int):
    x = torch.randn(64, 784, generator=torch.Generator().manual_seed(7))
    times: dict[str, list[float]] = {k: [] for k in backends}
    cpu: dict[str, list[float]] = {k: [] for k in backends}  # process CPU time: steadier on a shared machine
    out: dict[str, tuple[nn.Module, dict]] = {}
    for k in backends:  # warm-up: lazy imports and first-call costs stay out of the timings
        BACKENDS[k](copy.deepcopy(a), copy.deepcopy(b))
    for _ in range(repeats):
        for k in backends:
            ma, mb = copy.deepcopy(a), copy.deepcopy(b)
            t0, c0 = time.perf_counter(), time.process_time()
            out[k] = BACKENDS[k](ma, mb)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    rows = []
    for k in backends:
        aligned, info = out[k]
        with torch.no_grad():
            change = float((aligned(x) - b(x)).abs().max())
        row = {"case": name, "backend": k, "median_s": statistics.median(times[k]), "min_s": min(times[k]),
               "cpu_median_s": statistics.median(cpu[k]),
               "J": objective(a, aligned), "J_identity": objective(a, b), "out_change": change, **info}
        if truth is not None:
            row["exact"] = all(torch.equal(v, aligned.state_dict()[n]) for n, v in truth.state_dict().items())
            row["J_truth"] = objective(a, truth)
        rows.append(row)
        print(" ".join(f"{key}={val:.6g}" if isinstance(val, float) else f"{key}={val}" for key, val in row.items()),
              flush=True)
    return rows


def rebasin_cost_weights(a: nn.Module, b: nn.Module) -> None:
    """How often each tensor enters rebasin's cost matrix of each permutation (its PermutationInfo lists)."""
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError:
        return
    pcd = PermutationCoordinateDescent(copy.deepcopy(a), copy.deepcopy(b), example_input(a, batch=16))
    names = {id(p): n for n, p in pcd.model_b.named_parameters()}
    for _, infos in pcd.pinit.model_graph.permutation_to_info:
        counts: dict[str, int] = {}
        for i in infos:
            key = f"{names.get(id(i.parameter_b), '?')}[axis {i.axis}]"
            counts[key] = counts.get(key, 0) + 1
        print("rebasin cost terms:", ", ".join(f"{k} x{v}" for k, v in counts.items()), flush=True)


def order_spread(a: nn.Module, b: nn.Module, seeds: int, restarts: int) -> None:
    ts = [objective(a, run_transcription(a, copy.deepcopy(b), seed=s)[0]) for s in range(seeds)]
    print(f"transcription over {seeds} sweep-order seeds: J min/median/max = {min(ts):.6g}/"
          f"{statistics.median(ts):.6g}/{max(ts):.6g}", flush=True)
    ji = [objective(a, run_permsym_identity(a, b, seed=s)[0]) for s in range(seeds)]
    print(f"permsym init=identity over {seeds} sweep-order seeds: J min/median/max = {min(ji):.6g}/"
          f"{statistics.median(ji):.6g}/{max(ji):.6g}", flush=True)
    if "rebasin" in BACKENDS_USED:
        jr = []
        for s in range(seeds):
            jr.append(objective(a, run_rebasin(copy.deepcopy(a), copy.deepcopy(b), seed=s)[0]))
        print(f"rebasin over {seeds} seeds: J min/median/max = {min(jr):.6g}/{statistics.median(jr):.6g}/"
              f"{max(jr):.6g}", flush=True)
    js = [objective(a, run_permsym(a, b, seed=s)[0]) for s in range(seeds)]
    t0 = time.perf_counter()
    best = objective(a, run_permsym(a, b, seed=0, restarts=restarts)[0])
    print(f"sweep-order spread over {seeds} generator seeds: J min/median/max = {min(js):.6g}/"
          f"{statistics.median(js):.6g}/{max(js):.6g}; restarts={restarts}: J={best:.6g} "
          f"({time.perf_counter() - t0:.2f}s)", flush=True)


def ensemble_bench(seeds: int, repeats: int = 3) -> None:
    from permsym.ensemble import train as ensemble_train
    from permsym.train import fit

    X, y = torch.randn(2048, 64, generator=torch.Generator().manual_seed(0)), torch.randint(10, (2048,))
    arch, kw = "mlp:64-128-128-10", {"epochs": 2, "lr": 0.05, "batch_size": 32}
    loops, ens, cloops, cens = [], [], [], []
    for _ in range(repeats):  # interleaved; wall and process CPU time
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(seeds):
            fit(permsym.build(arch, seed=s), (X, y), seed=s, **kw)
        loops.append(time.perf_counter() - t0)
        cloops.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        ensemble_train(arch, (X, y), list(range(seeds)), **kw)
        ens.append(time.perf_counter() - t0)
        cens.append(time.process_time() - c0)
    loop, vm = statistics.median(loops), statistics.median(ens)
    cl, ce = statistics.median(cloops), statistics.median(cens)
    print(f"ensemble {seeds} seeds {arch}, median of {repeats}: loop {loop:.2f}s, ensemble {vm:.2f}s, "
          f"throughput x{loop / vm:.1f}; CPU time loop {cl:.2f}s, ensemble {ce:.2f}s, x{cl / ce:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="permsym,transcription,rebasin")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    ap.add_argument("--order-seeds", type=int, default=5)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--large", action="store_true", help="also 784-4096-4096-10, independent pair")
    ap.add_argument("--ensemble", type=int, default=0, help="also an ensemble of this many seeds")
    args = ap.parse_args()
    print(f"python {platform.python_version()} torch {torch.__version__} cpus {os.cpu_count()} "
          f"threads {args.threads} load1m {os.getloadavg()[0]:.2f}", flush=True)
    backends = args.backends.split(",")
    BACKENDS_USED.update(backends)
    arch = f"mlp:784-{args.width}-{args.width}-{args.width}-10"
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads), torch.no_grad():
        a, b, truth = planted_pair(arch)
        case("planted", a, b, truth, backends, args.repeats)
        a, b = permsym.build(arch, seed=0), permsym.build(arch, seed=1)
        case("random", a, b, None, backends, args.repeats)
        if "rebasin" in backends:
            rebasin_cost_weights(a, b)
        order_spread(a, b, args.order_seeds, args.restarts)
        if args.large:
            big = "mlp:784-4096-4096-10"
            case("random-4096", permsym.build(big, seed=0), permsym.build(big, seed=1), None, ["permsym"], 1)
    if args.ensemble:
        with threadpool_limits(limits=args.threads):
            ensemble_bench(args.ensemble, args.repeats)
    print(f"load1m at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
