#!/usr/bin/env python3
"""Noise-aware training: overhead of the monitor/controller, and fixed lr vs step decay vs T control.

Part 1 (overhead): seconds per epoch of ``permsym.train.fit`` on digits (MLP 64-W-10, batch 32)
plain, with a NoiseMonitor (per-sample and micro-batch estimators, every N steps) and with a
TemperatureControl (plus lambda_max power iterations every 50 steps). Median of ``--repeats``.

Part 2 (comparison, the u1_noise_aware experiment's units): on digits and on teacher data,
final test loss (mean +- sd over seeds), the seed-to-seed RMS spread of the final parameters
after weight-matching alignment (per parameter), and the measured temperature (mean over the
last quarter of the run, and at the last measurement), at equal SGD steps and batch size.

Usage (from the repository root):
  python benchmarks/bench_noise_aware.py --scale quick --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import permsym
from permsym._threads import limited_threads
from permsym.experiments.u1_noise_aware import METHODS, NoiseAware
from permsym.experiments.u1_noise_aware import load_split as split
from permsym.train import NoiseMonitor, TemperatureControl, fit


def overhead(width: int, epochs: int, every: int, repeats: int) -> list[tuple[str, float]]:
    train, _ = split("digits", None)
    arch = f"mlp:64-{width}-10,act=tanh"
    rows = []

    def run(kind: str) -> float:
        model = permsym.build(arch, seed=0)
        kw: dict = {}
        if kind.startswith("monitor"):
            kw["monitor"] = NoiseMonitor(every=every, method=kind.split(":")[1])
        if kind == "controller":
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            kw["monitor"] = NoiseMonitor(every=every)
            kw["controller"] = TemperatureControl(opt, "cosine:T0=5e-6,T_end=5e-8", lr_min=1e-4, lr_max=0.4, power_iters=5)
        start = time.perf_counter()
        fit(model, train, epochs=epochs, lr=0.1, batch_size=32, seed=0, **kw)
        return (time.perf_counter() - start) / epochs

    kinds = ["plain", "monitor:per-sample", "monitor:micro-batch", "controller"]
    for k in kinds:
        run(k)  # warm-up (vmap/functorch first-call costs)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):  # interleaved
        for k in kinds:
            times[k].append(run(k))
    for k in kinds:
        rows.append((k, statistics.median(times[k])))
    return rows


def comparison(scale: str) -> None:
    exp = NoiseAware()
    records = []
    for cfg in exp.units(scale):
        start = time.perf_counter()
        recs = exp.run_unit(cfg)
        print(f"  ran {cfg['dataset']}/{cfg['method']} in {time.perf_counter() - start:.1f} s", flush=True)
        records += [{**r, "config": cfg} for r in recs]
    print("\n| data | policy | test loss (mean +- sd) | aligned spread | raw spread | T last quarter | T last |")
    print("|---|---|---|---|---|---|---|")
    for d in ("digits", "teacher"):
        for m in METHODS:
            mine = [r for r in records if r["config"]["dataset"] == d and r["config"]["method"] == m]

            def vals(metric: str, mine: list = mine) -> list[float]:
                return [r["value"] for r in mine if r["metric"] == metric]

            tl = vals("test_loss")
            sd = statistics.stdev(tl) if len(tl) > 1 else 0.0
            spread = vals("spread_aligned") or [float("nan")]
            raw = vals("spread_raw") or [float("nan")]
            print(f"| {d} | {m} | {statistics.fmean(tl):.4f} +- {sd:.4f} | {spread[0]:.4f} | {raw[0]:.4f} | "
                  f"{statistics.fmean(vals('final_temperature')):.3g} | {statistics.fmean(vals('last_temperature')):.3g} |")
    verdict = exp.verdict(records)
    print(f"\nverdict ({scale}): {verdict.verdict}")
    for k, v in verdict.evidence.items():
        if "/" in k or "smaller" in k or "no worse" in k or "at_lr_max" in k:
            print(f"  {k}: {v}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="quick", choices=["tiny", "quick", "full"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} torch thread(s)")
    with limited_threads(torch_threads=args.threads, blas_threads=1):
        if not args.skip_overhead:
            print(f"\nseconds per epoch, digits MLP 64-{args.width}-10, batch 32, noise every {args.every} steps:")
            rows = overhead(args.width, 3, args.every, args.repeats)
            base = rows[0][1]
            for name, sec in rows:
                print(f"  {name:22s} {sec:.4f} s/epoch  ({sec / base:.2f}x plain)")
        print(f"\ncomparison at scale {args.scale!r}:")
        comparison(args.scale)


if __name__ == "__main__":
    main()
