#!/usr/bin/env python3
"""Forward+backward of ortho-polynomial activations and modular layers, side by side.

Times ``y = layer(x); y.backward(g)`` on ``x`` of shape (4096, 1024) float32 (median of
``--repeats`` after ``--warmup``), each variant in a fresh subprocess whose peak RSS (from
``resource.getrusage``) minus the ``noop`` variant's (``y = x.clone()``) is its extra memory.

Variants: ``noop``, ``gelu``, ``ortho<D>`` (OrthoPoly chebyshev, degree D, per-unit),
``ortho<D>c`` (same with ``compile=True``), ``naive<D>`` (stacked-basis chebyshev with plain
autograd), ``torchortho<D>`` (``torchortho.HermiteActivation(D)``, needs the package in the
running environment; never a permsym dependency), ``modular`` / ``masked`` (ModularMLP, 16
modules of 64 units, 2 sparse links at density 0.25, depth 3, on (4096, 64) inputs, vs its
dense ``to_masked_mlp()`` equivalent), ``modlayer`` / ``maskedlayer`` (one such hidden layer).

Example:
    python benchmarks/bench_layers.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

DEFAULT = (
    "noop,gelu,ortho4,ortho5,ortho8,ortho16,naive8,ortho8c,torchortho5,torchortho8,"
    "modular,masked,modlayer,maskedlayer"
)
MODULAR = "modular:64-10,modules=16,width=64,depth=3,links=2,density=0.25,wiring=ring"


class _Naive:
    """Stacked Chebyshev basis on the 'gauss' map, plain autograd (keeps D+1 tensors)."""

    def __new__(cls, units: int, degree: int):
        import torch

        from permsym.layers import OrthoPoly, poly_basis

        ref = OrthoPoly("chebyshev", degree, num_units=units)

        class Naive(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.coeffs = torch.nn.Parameter(ref.coeffs.detach().clone())

            def forward(self, x):
                return (poly_basis("chebyshev", ref.map.value(x), degree) * self.coeffs).sum(-1)

        return Naive()


def _modular_layer(masked: bool):
    import torch

    import permsym

    net = permsym.build(MODULAR.replace("64-10", "1024-10").replace("depth=3", "depth=2"))

    class One(torch.nn.Module):
        """Only the hidden-to-hidden modular layer (gather + einsum), or its masked form."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.dense = net.to_masked_mlp().fc2 if masked else None

        def forward(self, x):
            if self.dense is not None:
                return self.dense(x)
            n = x.shape[0]
            h = x.view(n, 16, 64)[:, self.net.gather].reshape(n, 16, -1)
            w = self.net.weights[0] * self.net.masks[0]
            return (torch.einsum("nmi,moi->nmo", h, w) + self.net.biases[0]).reshape(n, -1)

    return One()


def build(variant: str, units: int):
    import torch

    from permsym.layers import OrthoPoly

    if variant == "noop":
        return _Clone()
    if variant == "gelu":
        return torch.nn.GELU()
    if m := re.fullmatch(r"ortho(\d+)(c?)", variant):
        return OrthoPoly("chebyshev", int(m[1]), num_units=units, compile=bool(m[2]))
    if m := re.fullmatch(r"naive(\d+)", variant):
        return _Naive(units, int(m[1]))
    if m := re.fullmatch(r"torchortho(\d+)", variant):
        from torchortho import HermiteActivation

        return HermiteActivation(int(m[1]))
    if variant in ("modular", "masked"):
        import permsym

        net = permsym.build(MODULAR)
        return net.to_masked_mlp() if variant == "masked" else net
    if variant in ("modlayer", "maskedlayer"):
        return _modular_layer(variant == "maskedlayer")
    raise ValueError(f"unknown variant {variant!r}")


class _Clone:
    """``y = x.clone()``: the time and memory floor."""

    def __new__(cls):
        import torch

        class Clone(torch.nn.Module):
            def forward(self, x):
                return x.clone()

        return Clone()


def child(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    n, c = args.shape
    if args.variant in ("modular", "masked"):
        c = 64
    mod = build(args.variant, c)
    x = torch.randn(n, c, requires_grad=True)
    with torch.no_grad():
        g = torch.randn_like(mod(x))

    def step() -> tuple[float, float]:
        x.grad = None
        for p in mod.parameters():
            p.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        mod(x).backward(g)
        return time.perf_counter() - t0, time.process_time() - c0

    first = step()[0]
    for _ in range(args.warmup - 1):
        step()
    runs = [step() for _ in range(args.repeats)]
    out = {
        "variant": args.variant,
        "first_s": first,
        "median_ms": 1e3 * statistics.median(w for w, _ in runs),
        "min_ms": 1e3 * min(w for w, _ in runs),
        "median_cpu_ms": 1e3 * statistics.median(c for _, c in runs),
        "max_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print("RESULT " + json.dumps(out), flush=True)


def parent(args: argparse.Namespace) -> None:
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--variant", variant,
               "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--warmup", str(args.warmup), "--shape", *map(str, args.shape)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"[{variant}] failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1][7:]))
        print(f"[{variant}] {rows[-1]['median_ms']:.1f} ms", file=sys.stderr, flush=True)
    by = {r["variant"]: r for r in rows}
    floor = by.get("noop", {}).get("max_rss_MiB", 0.0)
    tensor_mib = args.shape[0] * args.shape[1] * 4 / 2**20
    gelu = by.get("gelu", {}).get("median_ms")
    print("| variant | median ms | min ms | CPU ms | x GELU | extra RSS MiB | extra / input |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = r["max_rss_MiB"] - floor
        ratio = f"{r['median_ms'] / gelu:.1f}" if gelu else ""
        print(f"| {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['median_cpu_ms']:.0f} | "
              f"{ratio} | {extra:.0f} | {extra / tensor_mib:.1f} |")
    for a, b in [("torchortho5", "ortho5"), ("torchortho8", "ortho8"), ("masked", "modular"),
                 ("maskedlayer", "modlayer"), ("naive8", "ortho8")]:
        if a in by and b in by:
            print(f"{a} / {b}: {by[a]['median_ms'] / by[b]['median_ms']:.1f}x")
    if rows:
        print(f"\nshape={args.shape} float32, threads={rows[0]['threads']}, torch={rows[0]['torch']}, "
              f"repeats={args.repeats}, warmup={args.warmup}, input tensor={tensor_mib:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=DEFAULT)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shape", type=int, nargs=2, default=[4096, 1024])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
