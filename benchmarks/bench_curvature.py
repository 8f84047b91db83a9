#!/usr/bin/env python3
"""Hessian top-5, trace estimators, per-sample gradients: permsym against the anchors, one run.

Problem (issue 3), every draw seeded:
  main    ``permsym.build("mlp:64-256-256-10,act=tanh", seed=0)`` at initialisation (85,002
          parameters), X ~ N(0, 1) of shape (2048, 64), labels ~ randint(0, 10) (seed 0),
          mean cross-entropy, full batch, float32.
  trace   ``mlp:64-W-W-10,act=tanh`` (W = ``--trace-width``, default 32: 3,466 parameters)
          trained by ``permsym.train.fit`` on ``digits`` (1,797 samples), so its Hessian has
          outliers; small enough for the exact float64 Hessian (``dense_hessian``).

Sections and contenders (an anchor that is not installed is skipped with the reason):
  1. Top-5 eigenvalues of the main model: ``hessian_top_eigenvalues`` (defaults: Lanczos,
     ``hvp="auto"`` (the written-out R-operator, ``"rop"``, on this MLP), ``tol=1e-6``; also
     ``hvp="revrev"``, ``hvp="linearize"``, ``tol=1e-4``, ``tol=1e-3`` and ``solver="eigsh"``), PyHessian ``hessian(...).eigenvalues(top_n=5)`` (defaults),
     hessian-eigenthings ``lanczos(k=5, max_iter=50, which="LA")`` and its defaults. Relative
     error against a float64 reference (permsym Lanczos in float64, ``tol=1e-10``, cross-checked
     against ARPACK on float64 ``linearize`` HVPs). Then the cost of one HVP for each way of computing it.
  2. Trace on the trained digits model: Hutch++ vs Hutchinson, the number of HVPs to reach a
     relative RMS error (over ``--trace-seeds`` seeds) against the exact trace; Hutchinson's
     count also from its exact variance $2(\\|H\\|_F^2 - \\sum_i H_{ii}^2)$. Then
     ``hessian_trace`` (Hutch++, 99 HVPs) vs PyHessian ``trace()`` and eigenthings ``trace()``.
  3. Per-sample gradients of the main model (N x P matrix): ``per_sample_gradients``
     (``vmap(grad)``, chunked), BackPACK ``BatchGrad`` and a Python loop over samples
     (``--loop-samples`` of them, time scaled to N), checked against each other.
  4. Stale gradient graph: each tool's top eigenvalue computed twice in a row.

Every contender runs with ``torch.set_num_threads(--threads)`` and the BLAS pools numpy and
scipy load capped to ``--blas-threads`` by threadpoolctl. Timed contenders run once untimed
(the "cold" column: first-call costs such as tracing), then ``--repeats`` interleaved rounds;
the median is reported with the 1-minute load average at the start of each round.

Options: ``--repeats N`` (default 5), ``--quick`` (2 repeats, smaller grids, for a smoke
test), ``--threads``, ``--blas-threads``, ``--json PATH`` (all numbers), ``--skip SECTIONS``
(comma-separated from topk, hvp, trace, noise, stale), ``--from-json PATH`` (print the tables
of a saved run).

Example (anchors in a scratch venv, never project dependencies):
    /tmp/anchors/bin/python benchmarks/bench_curvature.py --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn

import permsym
from permsym.curvature import (
    dense_hessian,
    hessian_operator,
    hessian_top_eigenvalues,
    hessian_trace,
    trace_estimate,
)
from permsym.curvature.hvp import METHODS as HVP_METHODS
from permsym.data import load
from permsym.noise import gradient_noise, per_sample_gradients
from permsym.train import fit

# isort: split
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _anchors module
from _anchors import Skip  # noqa: E402
from _anchors import anchor as _anchor  # noqa: E402

K = 5
MAIN_ARCH = "mlp:64-256-256-10,act=tanh"
TOPK_DEFAULT = "permsym lanczos (defaults: hvp=auto -> rop, tol=1e-6)"
PS_DEFAULT = "permsym per_sample_gradients (defaults: outer products on this MLP)"
REUSED = "permsym per_sample_gradients(out=G), G reused across calls"
SECTIONS = ("topk", "hvp", "trace", "noise", "stale")
ANCHORS = {
    "pyhessian": "PyHessian",
    "hessian_eigenthings": "hessian-eigenthings",
    "backpack": "backpack-for-pytorch",
}


def anchor(module: str) -> Any:
    """Import an anchor lazily; raise :class:`Skip` with the reason when it is not installed."""
    return _anchor(module, ANCHORS)


def version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version(dist)
    except PackageNotFoundError:
        return None


def main_problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2048, 64, generator=g)
    y = torch.randint(0, 10, (2048,), generator=g)
    return permsym.build(MAIN_ARCH, seed=seed), X, y


def clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def max_rel_err(est: list[float], ref: list[float]) -> float:
    a, b = sorted(est, reverse=True)[:K], sorted(ref, reverse=True)[:K]
    return max(abs(x - r) / abs(r) for x, r in zip(a, b, strict=True))


# ------------------------------------------------------------------ timing on a shared machine
def run_rounds(contenders: list[tuple[str, Callable[[int], dict]]], repeats: int, log) -> dict:
    """One untimed (cold) call per contender, then ``repeats`` interleaved timed rounds."""
    res: dict[str, dict] = {}
    for name, fn in contenders:
        t0 = time.perf_counter()
        try:
            out = fn(0)
        except Skip as exc:
            res[name] = {"skipped": str(exc)}
            log(f"  {name}: SKIPPED: {exc}")
            continue
        except Exception as exc:  # a failing anchor is a result, not a crash of the benchmark
            res[name] = {"skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            log(f"  {name}: FAILED: {res[name]['skipped']}")
            continue
        res[name] = {"cold_s": time.perf_counter() - t0, "runs": [], "out": out}
        log(f"  {name}: cold {res[name]['cold_s']:.2f} s")
    loads = []
    for r in range(repeats):
        loads.append(os.getloadavg()[0])
        for name, fn in contenders:
            if "skipped" in res[name]:
                continue
            t0 = time.perf_counter()
            out = fn(r + 1)
            res[name]["runs"].append({"wall_s": time.perf_counter() - t0, **out})
        log(f"  round {r + 1}/{repeats} done (load {loads[-1]:.2f})")
    for s in res.values():
        if "runs" in s:
            s["wall_s"] = statistics.median(x["wall_s"] for x in s["runs"])
            s["wall_min_s"] = min(x["wall_s"] for x in s["runs"])
            s["wall_max_s"] = max(x["wall_s"] for x in s["runs"])
    return {"contenders": res, "load1_per_round": loads}


def median_of(s: dict, key: str) -> float | None:
    vals = [x[key] for x in s.get("runs", []) if x.get(key) is not None]
    return statistics.median(vals) if vals else None


# ------------------------------------------------------------------ 1. top-5 eigenvalues
def permsym_top5(model, X, y, **kw) -> Callable[[int], dict]:
    def run(r: int) -> dict:
        res = hessian_top_eigenvalues(model, F.cross_entropy, (X, y), K,
                                      generator=torch.Generator().manual_seed(r), **kw)
        return {"eigs": list(res.eigenvalues), "hvps": res.num_matvecs, "converged": res.converged}

    return run


def pyhessian_top5(model, X, y) -> Callable[[int], dict]:
    def run(r: int) -> dict:
        anchor("pyhessian")
        ph = sys.modules["pyhessian.hessian"]
        count = [0]
        orig = ph.hessian_vector_product

        def counted(*a, **kw):
            count[0] += 1
            return orig(*a, **kw)

        clear_grads(model)  # its constructor accumulates into .grad (section 4)
        torch.manual_seed(r)  # PyHessian draws its start vectors from the global RNG
        ph.hessian_vector_product = counted
        try:
            eigs, _ = ph.hessian(model, nn.CrossEntropyLoss(), data=(X, y), cuda=False).eigenvalues(top_n=K)
        finally:
            ph.hessian_vector_product = orig
            clear_grads(model)
        return {"eigs": [float(e) for e in eigs], "hvps": count[0]}

    return run


def eigenthings_top5(model, X, y, **kw) -> Callable[[int], dict]:
    def run(r: int) -> dict:
        het = anchor("hessian_eigenthings")
        H = het.HessianOperator(model, [(X, y)], het.supervised_loss(F.cross_entropy))
        res = het.lanczos(H, k=K, seed=r, **kw)
        return {"eigs": [float(e) for e in res.eigenvalues], "hvps": res.iterations,
                "converged": bool(res.converged.all())}

    return run


def reference_top5(model, X, y, *, cross_check: bool, log) -> dict:
    t0 = time.perf_counter()
    ref = hessian_top_eigenvalues(model, F.cross_entropy, (X, y), K, tol=1e-10, dtype=torch.float64,
                                  hvp="revrev", generator=torch.Generator().manual_seed(12345))
    out = {"eigs": list(ref.eigenvalues), "residual_rel_max": max(
        r / abs(e) for r, e in zip(ref.residuals, ref.eigenvalues, strict=True)),
        "hvps": ref.num_matvecs, "wall_s": time.perf_counter() - t0,
        "method": "permsym Lanczos on float64 HVPs (revrev), tol=1e-10"}
    if cross_check:
        arp = hessian_top_eigenvalues(model, F.cross_entropy, (X, y), K, tol=1e-10, dtype=torch.float64,
                                      solver="eigsh", hvp="linearize",
                                      generator=torch.Generator().manual_seed(54321))
        out["arpack_f64_eigs"] = list(arp.eigenvalues)
        out["arpack_f64_max_rel_diff"] = max_rel_err(list(arp.eigenvalues), out["eigs"])
    log(f"  reference: {json.dumps(out)}")
    return out


def section_topk(args, log) -> dict:
    model, X, y = main_problem()
    log(f"\n== 1. top-{K} eigenvalues: {MAIN_ARCH}, {sum(p.numel() for p in model.parameters()):,} "
        f"params, N={X.shape[0]}")
    ref = reference_top5(model, X, y, cross_check=not args.quick, log=log)
    contenders = [
        (TOPK_DEFAULT, permsym_top5(model, X, y)),
        ("permsym lanczos hvp=revrev", permsym_top5(model, X, y, hvp="revrev")),
        ("permsym lanczos hvp=linearize", permsym_top5(model, X, y, hvp="linearize")),
        ("permsym lanczos tol=1e-4", permsym_top5(model, X, y, tol=1e-4)),
        ("permsym lanczos tol=1e-3", permsym_top5(model, X, y, tol=1e-3)),
        ("permsym eigsh (ARPACK, tol=1e-6)", permsym_top5(model, X, y, solver="eigsh")),
        ("PyHessian eigenvalues(top_n=5) defaults", pyhessian_top5(model, X, y)),
        ("eigenthings lanczos max_iter=50 LA", eigenthings_top5(model, X, y, max_iter=50, which="LA")),
        ("eigenthings lanczos defaults (max_iter=2k, LM)", eigenthings_top5(model, X, y)),
    ]
    out = run_rounds(contenders, args.repeats, log)
    for s in out["contenders"].values():
        for run in s.get("runs", []):
            run["max_rel_err"] = max_rel_err(run["eigs"], ref["eigs"])
        if "runs" in s:
            s["max_rel_err"] = median_of(s, "max_rel_err")
            s["max_rel_err_worst"] = max(x["max_rel_err"] for x in s["runs"])
            s["hvps"] = median_of(s, "hvps")
    out["reference"] = ref
    return out


def section_hvp(args, log) -> dict:
    """Milliseconds per HVP (and to build the operator) for each way of computing it."""
    model, X, y = main_problem()
    log("\n== 1b. cost of one Hessian-vector product (main model)")
    calls = args.hvp_calls
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(7),
                    dtype=torch.float64)

    def per_call(fn) -> float:
        fn()
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    out: dict[str, dict] = {}
    ref = None
    for method in HVP_METHODS:
        builds = []
        for _ in range(3):
            t0 = time.perf_counter()
            op = hessian_operator(model, F.cross_entropy, (X, y), hvp=method)
            builds.append(time.perf_counter() - t0)
        hv = op(v).double()
        ref = hv if ref is None else ref
        out[f"permsym hvp={method}"] = {"build_s": statistics.median(builds),
                                        "per_hvp_s": per_call(lambda op=op: op(v)),
                                        "rel_diff": float((hv - ref).norm() / ref.norm())}
        log(f"  permsym {method}: {out[f'permsym hvp={method}']}")
    v32 = v.float()
    try:
        het = anchor("hessian_eigenthings")
        H = het.HessianOperator(model, [(X, y)], het.supervised_loss(F.cross_entropy))
        hv = H.matvec(v32).double()
        out["eigenthings HessianOperator (autograd double backward)"] = {
            "build_s": 0.0, "per_hvp_s": per_call(lambda: H.matvec(v32)),
            "rel_diff": float((hv - ref).norm() / ref.norm())}
    except Skip as exc:
        out["eigenthings HessianOperator (autograd double backward)"] = {"skipped": str(exc)}
    try:
        anchor("pyhessian")
        ph = sys.modules["pyhessian.hessian"]
        clear_grads(model)
        t0 = time.perf_counter()
        hc = ph.hessian(model, nn.CrossEntropyLoss(), data=(X, y), cuda=False)
        build = time.perf_counter() - t0
        vs = [t.view_as(p) for t, p in zip(torch.split(v32, [p.numel() for p in hc.params]), hc.params,
                                            strict=True)]
        gradsH, params = hc.gradsH, hc.params
        hv = torch.cat([h.reshape(-1) for h in ph.hessian_vector_product(gradsH, params, vs)]).double()
        out["PyHessian cached gradient graph"] = {
            "build_s": build, "per_hvp_s": per_call(lambda: ph.hessian_vector_product(gradsH, params, vs)),
            "rel_diff": float((hv - ref).norm() / ref.norm())}
        del hc
        clear_grads(model)
    except Skip as exc:
        out["PyHessian cached gradient graph"] = {"skipped": str(exc)}
    # Does the BLAS cap reach torch? torch's MKL is linked statically, threadpoolctl cannot see it.
    op = hessian_operator(model, F.cross_entropy, (X, y))
    with threadpool_limits(limits=os.cpu_count(), user_api="blas"):
        uncapped = per_call(lambda: op(v))
    out["permsym hvp=auto, BLAS pools uncapped"] = {"build_s": float("nan"), "per_hvp_s": uncapped,
                                                         "rel_diff": 0.0}
    from threadpoolctl import threadpool_info

    out["_threadpools"] = [{k: d[k] for k in ("user_api", "internal_api", "num_threads", "filepath")}
                           for d in threadpool_info()]
    return out


# ------------------------------------------------------------------ 2. trace
def section_trace(args, log) -> dict:
    X, y = load("digits")
    arch = f"mlp:64-{args.trace_width}-{args.trace_width}-10,act=tanh"
    model = permsym.build(arch, seed=0)
    hist = fit(model, (X, y), epochs=args.trace_epochs, lr=0.1, batch_size=32, seed=0)
    P = sum(p.numel() for p in model.parameters())
    log(f"\n== 2. trace: {arch} ({P:,} params) trained {args.trace_epochs} epochs on digits "
        f"(N={X.shape[0]}), loss {hist.losses[0]:.3f} -> {hist.losses[-1]:.3f}")
    t0 = time.perf_counter()
    H = dense_hessian(model, F.cross_entropy, (X, y), dtype=torch.float64)
    dense_s = time.perf_counter() - t0
    diag = H.diagonal()
    tr = float(diag.sum())
    var1 = 2.0 * (float((H * H).sum()) - float((diag * diag).sum()))  # Var of one Rademacher z^T H z
    ev = torch.linalg.eigvalsh(H)
    del H
    spectrum = {"top10": [float(e) for e in ev.flip(0)[:10]], "trace": tr,
                "top10_share_of_trace": float(ev.flip(0)[:10].sum()) / tr,
                "n_negative": int((ev < 0).sum()), "min": float(ev[0]), "dense_hessian_s": dense_s}
    log(f"  exact: {json.dumps(spectrum)}")

    op = hessian_operator(model, F.cross_entropy, (X, y))
    grid = [m for m in (6, 12, 24, 48, 96, 192, 384) if m <= args.trace_max_m]
    rms: dict[str, dict[int, float]] = {"hutchpp": {}, "hutchinson": {}}
    for method in rms:
        for m in grid:
            errs = []
            for s in range(args.trace_seeds):
                est, _, _ = trace_estimate(op, num_matvecs=m, method=method,
                                           generator=torch.Generator().manual_seed(1000 + s))
                errs.append((est - tr) / tr)
            rms[method][m] = math.sqrt(sum(e * e for e in errs) / len(errs))
        log(f"  RMS relative error {method}: " + ", ".join(f"m={m}: {e:.3g}" for m, e in rms[method].items()))
    targets = []
    for eps in (1e-1, 5e-2, 2e-2, 1e-2, 5e-3):
        hpp = next((m for m in grid if rms["hutchpp"][m] <= eps), None)
        h_emp = next((m for m in grid if rms["hutchinson"][m] <= eps), None)
        h_exact = math.ceil(var1 / (eps * tr) ** 2)
        targets.append({"eps": eps, "hutchpp": hpp, "hutchinson_empirical": h_emp,
                        "hutchinson_exact": h_exact, "ratio": (h_exact / hpp) if hpp else None})
    # the tools, timed on the same model (each call builds its own HVP and draws its own probes)
    contenders = [
        ("permsym hessian_trace (Hutch++, 99 HVPs)", lambda r: _permsym_trace(model, X, y, r)),
        ("permsym hessian_trace hvp=linearize (Hutch++, 99)",
         lambda r: _permsym_trace(model, X, y, r, hvp="linearize")),
        ("permsym hessian_trace hutchinson (99 HVPs)",
         lambda r: _permsym_trace(model, X, y, r, method="hutchinson")),
        ("PyHessian trace() defaults", lambda r: _pyhessian_trace(model, X, y, r)),
        ("eigenthings trace() defaults (Hutch++, 100)", lambda r: _eigenthings_trace(model, X, y, r)),
    ]
    tools = run_rounds(contenders, args.repeats, log)
    for s in tools["contenders"].values():
        if "runs" in s:
            for run in s["runs"]:
                run["rel_err"] = abs(run["trace"] - tr) / abs(tr)
            s["rel_err"] = median_of(s, "rel_err")
            s["hvps"] = median_of(s, "hvps")
    return {"arch": arch, "params": P, "spectrum": spectrum, "hutchinson_var1": var1,
            "seeds": args.trace_seeds, "rms": {k: {str(m): e for m, e in v.items()} for k, v in rms.items()},
            "targets": targets, "tools": tools}


def _permsym_trace(model, X, y, r, method="hutchpp", hvp="auto") -> dict:
    res = hessian_trace(model, F.cross_entropy, (X, y), method=method, hvp=hvp,
                        generator=torch.Generator().manual_seed(r))
    return {"trace": res.estimate, "hvps": res.num_matvecs}


def _pyhessian_trace(model, X, y, r) -> dict:
    anchor("pyhessian")
    ph = sys.modules["pyhessian.hessian"]
    clear_grads(model)
    torch.manual_seed(r)
    try:
        samples = ph.hessian(model, nn.CrossEntropyLoss(), data=(X, y), cuda=False).trace()
    finally:
        clear_grads(model)
    return {"trace": float(sum(samples) / len(samples)), "hvps": len(samples)}


def _eigenthings_trace(model, X, y, r) -> dict:
    het = anchor("hessian_eigenthings")
    H = het.HessianOperator(model, [(X, y)], het.supervised_loss(F.cross_entropy))
    res = het.trace(H, seed=r)
    return {"trace": float(res.estimate), "hvps": 100}


# ------------------------------------------------------------------ 3. per-sample gradients
def section_noise(args, log) -> dict:
    model, X, y = main_problem()
    N = X.shape[0]
    log(f"\n== 3. per-sample gradients: {MAIN_ARCH}, N={N} (an N x P float32 matrix)")
    keep: dict[str, torch.Tensor] = {}

    class Generic(nn.Module):
        """The same MLP hidden behind a plain Module: per_sample_gradients takes its vmap path."""

        def __init__(self) -> None:
            super().__init__()
            self.mlp = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mlp(x)

    def ps(generic: bool) -> Callable[[int], dict]:
        def run(r: int) -> dict:
            G = per_sample_gradients(Generic() if generic else model, F.cross_entropy, (X, y))
            if r == 0 and not generic:
                keep["permsym"] = G
            return {"shape": list(G.shape)}

        return run

    def noise(r: int) -> dict:
        res = gradient_noise(model, F.cross_entropy, (X, y), batch_size=1, lr=1.0)
        return {"trace_C": res.trace_C}

    def backpack_batchgrad(flat: bool) -> Callable[[int], dict]:
        def run(r: int) -> dict:
            bp = anchor("backpack")
            from backpack.extensions import BatchGrad

            m = bp.extend(copy.deepcopy(model))
            loss = bp.extend(nn.CrossEntropyLoss())(m(X), y)
            with bp.backpack(BatchGrad()):
                loss.backward()
            grads = [p.grad_batch for p in m.parameters()]  # (N, *shape) each, of the mean loss
            if flat:  # the same object permsym returns: one (N, P) matrix, per-sample loss scale
                G = torch.cat([g.reshape(N, -1) for g in grads], 1).mul_(N)
                if r == 0:
                    keep["backpack"] = G
            return {"shape": [N, sum(g[0].numel() for g in grads)]}

        return run

    def backpack_l2(r: int) -> dict:
        bp = anchor("backpack")
        from backpack.extensions import BatchL2Grad

        m = bp.extend(copy.deepcopy(model))
        loss = bp.extend(nn.CrossEntropyLoss())(m(X), y)
        with bp.backpack(BatchL2Grad()):
            loss.backward()
        sq = sum(p.batch_l2.double() for p in m.parameters()) * N * N  # |g_i|^2 per sample
        g2 = sum(float(p.grad.double().square().sum()) for p in m.parameters())
        return {"trace_C": float(sq.mean()) - g2}

    n_loop = min(args.loop_samples, N)
    reused: dict[str, torch.Tensor] = {}

    def ps_reused(r: int) -> dict:
        if "permsym" not in reused:
            reused["permsym"] = torch.empty(N, sum(p.numel() for p in model.parameters()))
        return {"shape": list(per_sample_gradients(model, F.cross_entropy, (X, y), out=reused["permsym"]).shape)}

    def loop(r: int, reuse: bool = False) -> dict:
        m = copy.deepcopy(model)
        params = list(m.parameters())
        if reuse and "loop" not in reused:
            reused["loop"] = torch.empty(n_loop, sum(p.numel() for p in params))
        # the same (n, P) matrix, fresh or reused
        G = reused["loop"] if reuse else torch.empty(n_loop, sum(p.numel() for p in params))
        for i in range(n_loop):
            loss = F.cross_entropy(m(X[i : i + 1]), y[i : i + 1])
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)], out=G[i])
        if r == 0 and not reuse:
            keep["loop"] = G
        return {"samples": n_loop}

    contenders = [
        (PS_DEFAULT, ps(False)),
        ("permsym per_sample_gradients, vmap path (the MLP wrapped in a Module)", ps(True)),
        ("BackPACK BatchGrad (per-parameter grad_batch)", backpack_batchgrad(False)),
        ("BackPACK BatchGrad + concatenation to N x P", backpack_batchgrad(True)),
        (f"Python loop over samples ({n_loop} timed, scaled to {N})", loop),
        ("permsym gradient_noise (tr C streamed, no N x P matrix)", noise),
        ("BackPACK BatchL2Grad + grad (tr C)", backpack_l2),
        ("permsym per_sample_gradients(out=G), G reused across calls", ps_reused),
        (f"Python loop into a reused matrix ({n_loop} timed, scaled to {N})", lambda r: loop(r, reuse=True)),
    ]
    out = run_rounds(contenders, args.repeats, log)
    loop_name = contenders[4][0]
    for name in (loop_name, contenders[8][0]):
        loop_s = out["contenders"][name]
        if "runs" in loop_s:
            for key in ("wall_s", "wall_min_s", "wall_max_s", "cold_s"):
                loop_s[key] *= N / n_loop
            loop_s["scaled_from_samples"] = n_loop
    reused.clear()
    G = keep["permsym"]
    agree = {}

    def rel(A: torch.Tensor, B: torch.Tensor) -> float:
        return float((A.double() - B.double()).norm() / B.double().norm())

    if "backpack" in keep:
        agree[contenders[3][0]] = rel(keep.pop("backpack"), G)
    if "loop" in keep:
        agree[loop_name] = rel(keep.pop("loop"), G[:n_loop])
    gbar = G.double().mean(0)
    trC = float(sum(float(G[s : s + 256].double().square().sum()) for s in range(0, N, 256)) / N - gbar @ gbar)
    del G, keep["permsym"]
    for name, _ in contenders[5:7]:
        s = out["contenders"][name]
        if "runs" in s:
            agree[name] = abs(s["runs"][0]["trace_C"] - trC) / trC
    out["agreement_rel_diff_vs_permsym"] = agree
    out["trace_C"] = trC
    log(f"  agreement (relative Frobenius difference vs permsym): {json.dumps(agree)}")
    return out


# ------------------------------------------------------------------ 4. stale gradient graph
def section_stale(args, log) -> dict:
    model, X, y = main_problem()
    log("\n== 4. stale gradient graph: top eigenvalue twice in a row (main model)")
    out: dict[str, dict] = {}
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def top1() -> float:
        return hessian_top_eigenvalues(model, F.cross_entropy, (X, y), 1,
                                       generator=torch.Generator().manual_seed(3)).eigenvalues[0]

    a, b = top1(), top1()
    untouched = all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and all(
        p.grad is None for p in model.parameters())
    out["permsym hessian_top_eigenvalues x2"] = {"first": a, "second": b, "ratio": b / a,
                                                 "model_untouched": untouched}
    try:
        anchor("pyhessian")
        ph = sys.modules["pyhessian.hessian"]
        crit = nn.CrossEntropyLoss()

        def ph_top1(h) -> float:
            torch.manual_seed(3)
            return float(h.eigenvalues(top_n=1)[0][0])

        clear_grads(model)
        a = ph_top1(ph.hessian(model, crit, data=(X, y), cuda=False))
        b = ph_top1(ph.hessian(model, crit, data=(X, y), cuda=False))
        out["PyHessian hessian(...).eigenvalues() x2, one after the other"] = {
            "first": a, "second": b, "ratio": b / a}
        clear_grads(model)
        h1 = ph.hessian(model, crit, data=(X, y), cuda=False)
        h2 = ph.hessian(model, crit, data=(X, y), cuda=False)  # built before h1 was used
        b = ph_top1(h2)
        a = ph_top1(h1)
        out["PyHessian two hessian(...) objects built back to back"] = {"first": a, "second": b,
                                                                        "ratio": b / a}
        del h1, h2
        clear_grads(model)
    except Skip as exc:
        out["PyHessian"] = {"skipped": str(exc)}
    try:
        het = anchor("hessian_eigenthings")

        def het_top1() -> float:
            H = het.HessianOperator(model, [(X, y)], het.supervised_loss(F.cross_entropy))
            return float(het.lanczos(H, k=1, max_iter=50, which="LA", seed=3).eigenvalues[0])

        a, b = het_top1(), het_top1()
        out["eigenthings lanczos x2"] = {"first": a, "second": b, "ratio": b / a}
    except Skip as exc:
        out["eigenthings"] = {"skipped": str(exc)}
    for name, s in out.items():
        log(f"  {name}: {json.dumps(s)}")
    return out


# ------------------------------------------------------------------ report
def fmt(x: float | None, spec: str = ".3g") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def report(results: dict) -> str:
    lines: list[str] = []
    meta = results["meta"]
    lines.append(f"threads: torch {meta['torch_threads']}, BLAS {meta['blas_threads']}; "
                 f"load average at start {meta['loadavg_start']}, at end {meta.get('loadavg_end')}")
    if "topk" in results:
        t = results["topk"]
        ref = t["reference"]
        lines += ["", f"### 1. Hessian top-{K} ({MAIN_ARCH}, 85,002 params, N=2048)", "",
                  f"Reference: {ref['method']}: {', '.join(f'{e:.10g}' for e in ref['eigs'])} "
                  f"(max relative residual {ref['residual_rel_max']:.1e}"
                  + (f"; ARPACK float64 agrees to {ref['arpack_f64_max_rel_diff']:.1e}"
                     if "arpack_f64_max_rel_diff" in ref else "") + ").",
                  f"Load average (1 min) per round: {', '.join(f'{x:.2f}' for x in t['load1_per_round'])}.",
                  "", "| contender | wall s median (min-max) | x permsym default | HVPs | max rel err top-5 "
                  "(median / worst) | cold s |", "|---|---|---|---|---|---|"]
        base = t["contenders"][TOPK_DEFAULT].get("wall_s")
        for name, s in t["contenders"].items():
            if "skipped" in s:
                lines.append(f"| {name} | skipped: {s['skipped']} | | | | |")
                continue
            lines.append(f"| {name} | {s['wall_s']:.2f} ({s['wall_min_s']:.2f}-{s['wall_max_s']:.2f}) | "
                         f"{s['wall_s'] / base:.2f} | {fmt(s['hvps'], '.0f')} | "
                         f"{s['max_rel_err']:.1e} / {s['max_rel_err_worst']:.1e} | {s['cold_s']:.2f} |")
    if "hvp" in results:
        lines += ["", "### 1b. One Hessian-vector product (main model)", "",
                  "| way | build ms | ms per HVP (median) | rel diff vs auto |", "|---|---|---|---|"]
        for name, s in results["hvp"].items():
            if name.startswith("_"):
                continue
            if "skipped" in s:
                lines.append(f"| {name} | skipped: {s['skipped']} | | |")
                continue
            lines.append(f"| {name} | {fmt(1e3 * s['build_s'], '.0f')} | {1e3 * s['per_hvp_s']:.1f} | "
                         f"{s['rel_diff']:.1e} |")
    if "trace" in results:
        t = results["trace"]
        sp = t["spectrum"]
        lines += ["", f"### 2. Trace ({t['arch']}, {t['params']:,} params, trained on digits)", "",
                  f"Exact trace {sp['trace']:.6g} (dense float64 Hessian, {sp['dense_hessian_s']:.0f} s); "
                  f"top-10 eigenvalues {', '.join(f'{e:.3g}' for e in sp['top10'])} hold "
                  f"{100 * sp['top10_share_of_trace']:.0f}% of it; {sp['n_negative']} negative "
                  f"eigenvalues (min {sp['min']:.2g}). RMS over {t['seeds']} seeds.", "",
                  "| HVPs m | " + " | ".join(t["rms"]["hutchpp"]) + " |",
                  "|---|" + "---|" * len(t["rms"]["hutchpp"]),
                  "| Hutch++ RMS rel err | " + " | ".join(fmt(e) for e in t["rms"]["hutchpp"].values()) + " |",
                  "| Hutchinson RMS rel err | " + " | ".join(fmt(e) for e in t["rms"]["hutchinson"].values())
                  + " |",
                  "| Hutchinson exact RMS | " + " | ".join(
                      fmt(math.sqrt(t["hutchinson_var1"] / int(m)) / abs(sp["trace"])) for m in t["rms"]["hutchpp"])
                  + " |",
                  "", "| target RMS rel err | Hutch++ HVPs (grid) | Hutchinson HVPs (exact variance; grid) "
                  "| Hutchinson / Hutch++ |", "|---|---|---|---|"]
        for r in t["targets"]:
            lines.append(f"| {r['eps']:g} | {r['hutchpp'] or '> grid'} | {r['hutchinson_exact']} "
                         f"({r['hutchinson_empirical'] or '> grid'}) | {fmt(r['ratio'], '.1f')} |")
        tools = t["tools"]
        lines += ["", f"Load average per round: {', '.join(f'{x:.2f}' for x in tools['load1_per_round'])}.",
                  "", "| tool | wall s median | x permsym | HVPs | rel err (median over runs) |",
                  "|---|---|---|---|---|"]
        base = tools["contenders"]["permsym hessian_trace (Hutch++, 99 HVPs)"].get("wall_s")
        for name, s in tools["contenders"].items():
            if "skipped" in s:
                lines.append(f"| {name} | skipped: {s['skipped']} | | | |")
                continue
            lines.append(f"| {name} | {s['wall_s']:.3f} | {s['wall_s'] / base:.2f} | {fmt(s['hvps'], '.0f')} | "
                         f"{s['rel_err']:.1e} |")
    if "noise" in results:
        t = results["noise"]
        agree = t["agreement_rel_diff_vs_permsym"]
        lines += ["", f"### 3. Per-sample gradients ({MAIN_ARCH}, N=2048)", "",
                  f"Load average per round: {', '.join(f'{x:.2f}' for x in t['load1_per_round'])}.", "",
                  "| contender | wall s median (min-max) | x permsym | rel diff vs permsym |",
                  "|---|---|---|---|"]
        base = t["contenders"][PS_DEFAULT].get("wall_s")
        for name, s in t["contenders"].items():
            if "skipped" in s:
                lines.append(f"| {name} | skipped: {s['skipped']} | | |")
                continue
            lines.append(f"| {name} | {s['wall_s']:.2f} ({s['wall_min_s']:.2f}-{s['wall_max_s']:.2f}) | "
                         f"{s['wall_s'] / base:.2f} | {fmt(agree.get(name), '.1e')} |")
    if "stale" in results:
        lines += ["", "### 4. Top eigenvalue twice in a row", "", "| tool | first | second | ratio |",
                  "|---|---|---|---|"]
        for name, s in results["stale"].items():
            if "skipped" in s:
                lines.append(f"| {name} | skipped: {s['skipped']} | | |")
                continue
            lines.append(f"| {name} | {s['first']:.6g} | {s['second']:.6g} | {s['ratio']:.4f} |")
    lines += ["", "### Targets", ""] + [f"- {t}" for t in targets(results)]
    return "\n".join(lines)


def targets(results: dict) -> list[str]:
    """The issue's targets, each with the measured figures and met / MISSED."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    out = []
    if "topk" in results:
        c = results["topk"]["contenders"]
        ph = c.get("PyHessian eigenvalues(top_n=5) defaults", {})
        het = c.get("eigenthings lanczos max_iter=50 LA", {})
        for name, s in c.items():
            if not name.startswith("permsym lanczos") or "wall_s" not in s:
                continue
            ok_err = s["max_rel_err_worst"] <= 1e-5
            msg = (f"{name}: {s['wall_s']:.2f} s, worst max rel err {s['max_rel_err_worst']:.1e} "
                   f"(<= 1e-5: {verdict(ok_err)})")
            if "wall_s" in ph:
                sp = ph["wall_s"] / s["wall_s"]
                msg += f"; {sp:.2f}x faster than PyHessian defaults ({verdict(ok_err and sp > 1)})"
            if "wall_s" in het:
                sp = het["wall_s"] / s["wall_s"]
                msg += (f"; {sp:.2f}x faster than eigenthings Lanczos-50 at rel err "
                        f"{het['max_rel_err']:.0e} (>= 1.5x: {verdict(ok_err and sp >= 1.5)})")
            out.append(msg)
    if "noise" in results:
        c = results["noise"]["contenders"]
        base = c[PS_DEFAULT]["wall_s"]
        for name, s in c.items():
            if "wall_s" not in s:
                continue
            if name.startswith("BackPACK BatchGrad"):
                out.append(f"per_sample_gradients {base:.2f} s vs {name} {s['wall_s']:.2f} s: "
                           f"{s['wall_s'] / base:.2f}x (>= 1: {verdict(base <= s['wall_s'])})")
            if name.startswith("Python loop over"):
                out.append(f"per_sample_gradients {base:.2f} s vs {name} {s['wall_s']:.2f} s: "
                           f"{s['wall_s'] / base:.1f}x (>= 5x: {verdict(s['wall_s'] >= 5 * base)})")
            if name.startswith("Python loop into") and "wall_s" in c.get(REUSED, {}):
                mine = c[REUSED]["wall_s"]
                out.append(f"{REUSED} {mine:.3f} s vs {name} {s['wall_s']:.2f} s: "
                           f"{s['wall_s'] / mine:.1f}x (>= 5x: {verdict(s['wall_s'] >= 5 * mine)})")
    if "stale" in results:
        s = results["stale"]["permsym hessian_top_eigenvalues x2"]
        ok = abs(s["ratio"] - 1) < 1e-6 and s["model_untouched"]
        out.append(f"permsym top eigenvalue twice in a row: ratio {s['ratio']:.6f}, model untouched "
                   f"{s['model_untouched']} ({verdict(ok)})")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    ap.add_argument("--quick", action="store_true", help="2 repeats, smaller grids (smoke test)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--blas-threads", type=int, default=1, help="numpy/scipy BLAS threads (threadpoolctl)")
    ap.add_argument("--skip", default="", help=f"comma-separated sections to skip: {', '.join(SECTIONS)}")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="print the tables of a saved --json run (measures nothing)")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as fh:
            print(report(json.load(fh)))
        return
    args.skip = {s for s in args.skip.split(",") if s}
    if args.skip - set(SECTIONS):
        ap.error(f"--skip: unknown section(s) {', '.join(sorted(args.skip - set(SECTIONS)))}; "
                 f"expected some of {', '.join(SECTIONS)}")
    for name in ("repeats", "threads", "blas_threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.quick:
        args.repeats = min(args.repeats, 2)
    args.hvp_calls = 5 if args.quick else 20
    args.trace_width = 16 if args.quick else 32
    args.trace_epochs = 10
    args.trace_seeds = 4 if args.quick else 20
    args.trace_max_m = 96 if args.quick else 384
    args.loop_samples = 32 if args.quick else 256

    # PyHessian's backward(create_graph=True) warns about a parameter <-> grad reference cycle;
    # BackPACK's module hooks warn on inputs that do not require grad.
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    meta = {
        "command": " ".join([sys.executable] + sys.argv),
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "blas_threads": args.blas_threads,
        "versions": {d: version(d) for d in ("torch", "permsym", "numpy", "scipy", "PyHessian",
                                             "hessian-eigenthings", "backpack-for-pytorch", "threadpoolctl")},
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    log(json.dumps(meta))
    results: dict[str, Any] = {"meta": meta, "args": {k: (sorted(v) if isinstance(v, set) else v)
                                                      for k, v in vars(args).items()}}
    sections = {"topk": section_topk, "hvp": section_hvp, "trace": section_trace, "noise": section_noise,
                "stale": section_stale}
    # threadpoolctl caps the BLAS libraries loaded when the limit is entered: load scipy's first
    import scipy.sparse.linalg  # noqa: F401

    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        for name, fn in sections.items():
            if name not in args.skip:
                results[name] = fn(args, log)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    log("\n" + report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
