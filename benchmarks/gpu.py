#!/usr/bin/env python3
"""permsym on a CUDA GPU against the CPU benchmarks' anchors, at sizes that fill the card.

Sections (an anchor that is not installed is skipped with the reason; a contender that
raises is reported as an error row, not a crash):
  hessian   top-5 Hessian eigenvalues, ``permsym.curvature.hessian_top_eigenvalues`` vs PyHessian
            ``hessian(..., cuda=True).eigenvalues(top_n=5)`` (anchor of bench_curvature.py), on
            ``mlp:256-W-W-10,act=tanh`` over N samples.
  noise     per-sample gradients (N x P), ``permsym.noise.per_sample_gradients`` vs BackPACK
            ``BatchGrad`` (anchor of bench_curvature.py).
  ensemble  S seeds of ``mlp:256-W-W-10`` trained by ``permsym.ensemble.train(device="cuda")``
            vs a loop of ``permsym.train.fit`` on the GPU (anchor of bench_alignment.py).
  poly      ``permsym.layers.OrthoPoly("chebyshev", 8)`` forward + backward vs ``nn.GELU`` and
            ``torchortho.HermiteActivation(8)`` (anchors of bench_layers.py).

Sizes scale with the card's memory (``--scale`` multiplies them). Each contender runs once
untimed (warm-up, compilation, cuDNN autotuning), then ``--repeats`` timed runs between
``torch.cuda.synchronize()`` calls; the median is reported with peak GPU memory.

Usage:
    python benchmarks/gpu.py [--repeats 5] [--scale 1.0] [--skip hessian,noise] [--json out.json]
    python benchmarks/gpu.py --smoke   # tiny sizes on the CPU: checks the code paths, no figures

On a machine without CUDA it exits with one line (unless ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# isort: split
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _anchors module
from _anchors import Skip  # noqa: E402
from _anchors import anchor as _anchor  # noqa: E402

SECTIONS = ("hessian", "noise", "ensemble", "poly")
ANCHORS = {"pyhessian": "PyHessian", "backpack": "backpack-for-pytorch", "torchortho": "torchortho"}


def anchor(module: str) -> Any:
    """Import an anchor lazily; raise :class:`Skip` with the reason when it is not installed."""
    return _anchor(module, ANCHORS)


def timed(fn: Callable[[], Any], device: Any, repeats: int) -> dict[str, float]:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "peak_mib": peak}


def sizes(device: Any, scale: float, smoke: bool) -> dict[str, int]:
    """Problem sizes: ``--smoke`` tiny; else chosen for an 80 GB card, scaled by its memory and ``scale``."""
    if smoke:
        return {"width": 32, "n": 256, "seeds": 4, "units": 64, "batch": 128, "epochs": 1}
    import torch

    card = torch.cuda.get_device_properties(device).total_memory / 80e9
    f = max(card * scale, 0.05)
    return {"width": int(2048 * min(f, 1) ** 0.5), "n": int(32768 * f), "seeds": int(256 * f),
            "units": int(8192 * min(f, 1) ** 0.5), "batch": int(16384 * f), "epochs": 2}


def problem(s: dict[str, int], device: Any, seed: int = 0) -> tuple[Any, Any, Any]:
    import torch

    import permsym

    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU (same draws on every device), then moved
    model = permsym.build(f"mlp:256-{s['width']}-{s['width']}-10,act=tanh", seed=seed).to(device)
    X = torch.randn(s["n"], 256, generator=gen).to(device)
    y = torch.randint(0, 10, (s["n"],), generator=gen).to(device)
    return model, X, y


def section_hessian(s: dict[str, int], device: Any, repeats: int) -> list[tuple[str, Callable[[], Any]]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from permsym.curvature import hessian_top_eigenvalues

    model, X, y = problem(s, device)

    def ours() -> Any:
        return hessian_top_eigenvalues(model, F.cross_entropy, (X, y), 5, generator=torch.Generator().manual_seed(0))

    def pyhessian() -> Any:
        ph = anchor("pyhessian")
        for p in model.parameters():
            p.grad = None
        return ph.hessian(model, nn.CrossEntropyLoss(), data=(X, y), cuda=device.type == "cuda").eigenvalues(top_n=5)

    return [("permsym hessian_top_eigenvalues", ours), ("PyHessian eigenvalues(top_n=5)", pyhessian)]


def section_noise(s: dict[str, int], device: Any, repeats: int) -> list[tuple[str, Callable[[], Any]]]:
    import torch.nn.functional as F
    from torch import nn

    from permsym.noise import per_sample_gradients

    model, X, y = problem(s, device)
    X, y = X[: s["batch"]], y[: s["batch"]]

    def ours() -> Any:
        return per_sample_gradients(model, F.cross_entropy, (X, y))

    def backpack() -> Any:
        bp = anchor("backpack")
        from backpack.extensions import BatchGrad

        net = bp.extend(model)
        loss = bp.extend(nn.CrossEntropyLoss())(net(X), y)
        with bp.backpack(BatchGrad()):
            loss.backward()
        out = [p.grad_batch.flatten(1) for p in net.parameters()]
        for p in net.parameters():
            p.grad = None
        return out

    return [("permsym per_sample_gradients", ours), ("BackPACK BatchGrad", backpack)]


def section_ensemble(s: dict[str, int], device: Any, repeats: int) -> list[tuple[str, Callable[[], Any]]]:
    import permsym
    from permsym.ensemble import train
    from permsym.train import fit

    _, X, y = problem(s, device)
    arch = f"mlp:256-{s['width'] // 4}-{s['width'] // 4}-10"
    seeds = list(range(s["seeds"]))
    kw = {"epochs": s["epochs"], "lr": 0.05, "batch_size": 256}

    def ours() -> Any:
        return train(arch, (X, y), seeds, device=device, **kw)

    def loop() -> Any:
        return [fit(permsym.build(arch, seed=k).to(device), (X, y), seed=k, **kw) for k in seeds]

    return [(f"permsym ensemble.train ({len(seeds)} seeds)", ours), (f"loop of fit ({len(seeds)} seeds)", loop)]


def section_poly(s: dict[str, int], device: Any, repeats: int) -> list[tuple[str, Callable[[], Any]]]:
    import torch
    from torch import nn

    from permsym.layers import OrthoPoly

    x = torch.randn(s["batch"], s["units"], generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()

    def run(make: Callable[[], nn.Module]) -> Callable[[], Any]:
        layer: list[nn.Module] = []

        def go() -> Any:
            if not layer:
                layer.append(make().to(device))
            x.grad = None
            layer[0](x).square().mean().backward()

        return go

    def torchortho() -> nn.Module:
        return anchor("torchortho").HermiteActivation(8)

    return [("permsym OrthoPoly(chebyshev, 8)", run(lambda: OrthoPoly("chebyshev", 8, num_units=s["units"]))),
            ("nn.GELU", run(nn.GELU)), ("torchortho HermiteActivation(8)", run(torchortho))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the problem sizes")
    parser.add_argument("--skip", default="", help=f"comma-separated from {', '.join(SECTIONS)}")
    parser.add_argument("--json", default=None, help="also write all numbers to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: check the code paths only")
    args = parser.parse_args()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: needs a CUDA GPU; torch {torch.__version__} sees none "
              "(run it on a GPU machine, or --smoke for a CPU check of the code paths).", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    s = sizes(device, args.scale, args.smoke)
    name = "CPU smoke run (tiny sizes; not figures)" if args.smoke else torch.cuda.get_device_name(device)
    print(f"# {name}; torch {torch.__version__}; sizes {s}; median of {1 if args.smoke else args.repeats}")
    rows: list[dict[str, Any]] = []
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    for section in SECTIONS:
        if section in skip:
            continue
        contenders = globals()[f"section_{section}"](s, device, args.repeats)
        base = None
        for label, fn in contenders:
            row: dict[str, Any] = {"section": section, "contender": label}
            try:
                row.update(timed(fn, device, 1 if args.smoke else args.repeats))
                base = base or row["median_ms"]
                row["x_permsym"] = row["median_ms"] / base
            except Skip as why:
                row["note"] = f"skipped: {why}"
            except Exception as exc:  # noqa: BLE001 - a failing contender is a result
                row["note"] = f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\n| section | contender | median ms | min ms | peak GPU MiB | x permsym | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.1f}" if k in r else "-" for k in ("median_ms", "min_ms", "peak_mib")]
        ratio = f"{r['x_permsym']:.2f}" if "x_permsym" in r else "-"
        print(f"| {r['section']} | {r['contender']} | {' | '.join(cells)} | {ratio} | {r.get('note', '')} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "sizes": s, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
