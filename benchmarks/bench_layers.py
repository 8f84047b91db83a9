#!/usr/bin/env python3
"""Forward+backward of ortho-polynomial activations and modular layers, side by side.

Times ``y = layer(x); y.backward(g)`` on ``x`` of shape (4096, 1024) float32 (median of
``--repeats`` after ``--warmup``; wall and process CPU time), each variant in a fresh
subprocess. Memory, two ways, each minus the ``noop`` variant's (``y = x.clone()``):

* ``life MiB``: the timing process's lifetime peak RSS (``resource.getrusage``) - includes
  imports, compilation and whatever glibc keeps after frees;
* ``step MiB``: a second fresh process with glibc's mmap threshold fixed at 64 KiB
  (``MALLOC_MMAP_THRESHOLD_``, so every large tensor is mapped on allocation and unmapped on
  free and RSS follows live tensors), peak RSS (``VmHWM`` reset through
  ``/proc/self/clear_refs`` after the warm-up steps) minus RSS before the measured
  forward+backward steps: the extra peak memory of a forward+backward itself.

Variants: ``noop``, ``gelu``, ``ortho<D>`` (OrthoPoly chebyshev, degree D, per-unit),
``ortho<D>c`` (same with ``compile=True``: native single-pass C++ kernels), ``ortho<D>ci``
(``compile=True`` with inductor's kernels only, ``poly_native.ENABLED = False``), ``naive<D>`` (stacked-basis chebyshev with plain
autograd), ``torchortho<D>`` (``torchortho.HermiteActivation(D)``, needs the package in the
running environment; never a permsym dependency), ``modular`` / ``masked`` (ModularMLP, 16
modules of 64 units, 2 sparse links at density 0.25, depth 3, on (4096, 64) inputs, vs its
dense ``to_masked_mlp()`` equivalent), ``modlayer`` / ``maskedlayer`` (one such hidden layer);
a suffix ``-l<K>`` (``modular-l1``, ``masked-l1``, ``modlayer-l0``, ...) sets the number of
links per module to K instead of 2.

Example:
    python benchmarks/bench_layers.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

DEFAULT = (
    "noop,gelu,ortho4,ortho5,ortho8,ortho16,naive8,ortho8c,ortho8ci,ortho16c,torchortho5,torchortho8,"
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


def _modular_arch(links: int) -> str:
    return MODULAR.replace("links=2", f"links={links}")


def _modular_layer(masked: bool, links: int = 2):
    import torch

    import permsym
    from permsym.layers.modular import module_blocks

    net = permsym.build(_modular_arch(links).replace("64-10", "1024-10").replace("depth=3", "depth=2"))

    class One(torch.nn.Module):
        """Only the hidden-to-hidden modular layer (feature-major blocks + links), or its
        masked dense form; the (4096, 1024) input is read as 16 modules of 64 units."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.dense = net.to_masked_mlp().fc2 if masked else None

        def forward(self, x):
            if self.dense is not None:
                return self.dense(x)
            h = x.view(16, 64, x.shape[0])  # feature-major, as ModularMLP keeps its hidden state
            w = self.net.weights[0] * self.net.masks[0]
            return module_blocks(h, w, self.net.biases[0], self.net.sources)

    return One()


def build(variant: str, units: int):
    import torch

    from permsym.layers import OrthoPoly

    if variant == "noop":
        return _Clone()
    if variant == "gelu":
        return torch.nn.GELU()
    if m := re.fullmatch(r"ortho(\d+)(c?)(i?)", variant):
        if m[3]:
            from permsym.layers import poly_native

            poly_native.ENABLED = False
        return OrthoPoly("chebyshev", int(m[1]), num_units=units, compile=bool(m[2]))
    if m := re.fullmatch(r"naive(\d+)", variant):
        return _Naive(units, int(m[1]))
    if m := re.fullmatch(r"torchortho(\d+)", variant):
        from torchortho import HermiteActivation

        return HermiteActivation(int(m[1]))
    if m := re.fullmatch(r"(modular|masked|modlayer|maskedlayer)(?:-l(\d+))?", variant):
        import permsym

        links = int(m[2]) if m[2] else 2
        if m[1] in ("modlayer", "maskedlayer"):
            return _modular_layer(m[1] == "maskedlayer", links)
        net = permsym.build(_modular_arch(links))
        return net.to_masked_mlp() if m[1] == "masked" else net
    raise ValueError(f"unknown variant {variant!r}")


class _Clone:
    """``y = x.clone()``: the time and memory floor."""

    def __new__(cls):
        import torch

        class Clone(torch.nn.Module):
            def forward(self, x):
                return x.clone()

        return Clone()


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    n, c = args.shape
    if re.fullmatch(r"(modular|masked)(-l\d+)?", args.variant):
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
    out: dict[str, object] = {"variant": args.variant, "first_s": first, "threads": torch.get_num_threads(),
                              "torch": torch.__version__}
    if args.memory:
        x.grad = None
        for p in mod.parameters():
            p.grad = None
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = _proc_status_kib("VmRSS")
        step()
        step()
        out["step_MiB"] = (_proc_status_kib("VmHWM") - before) / 1024
    else:
        runs = [step() for _ in range(args.repeats)]
        out.update({
            "median_ms": 1e3 * statistics.median(w for w, _ in runs),
            "min_ms": 1e3 * min(w for w, _ in runs),
            "median_cpu_ms": 1e3 * statistics.median(c for _, c in runs),
            "max_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(args: argparse.Namespace, variant: str, memory: bool) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--variant", variant,
           "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--shape", *map(str, args.shape)]
    env = dict(os.environ)
    if memory:
        cmd.append("--memory")
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"[{variant}] failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][7:])


def parent(args: argparse.Namespace) -> None:
    rows = []
    for variant in args.variants.split(","):
        row = _run_child(args, variant, memory=False)
        if row is None:
            continue
        if not args.no_memory and os.path.exists("/proc/self/clear_refs"):
            mem = _run_child(args, variant, memory=True)
            row["step_MiB"] = mem["step_MiB"] if mem else float("nan")
        rows.append(row)
        print(f"[{variant}] {row['median_ms']:.1f} ms", file=sys.stderr, flush=True)
    by = {r["variant"]: r for r in rows}
    floor = by.get("noop", {}).get("max_rss_MiB", 0.0)
    step_floor = by.get("noop", {}).get("step_MiB", 0.0)
    tensor_mib = args.shape[0] * args.shape[1] * 4 / 2**20
    gelu, gelu_cpu = by.get("gelu", {}).get("median_ms"), by.get("gelu", {}).get("median_cpu_ms")
    print("| variant | median ms | min ms | CPU ms | x GELU | x GELU (CPU) | life MiB | step MiB | step / input |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['median_ms'] / gelu:.1f}" if gelu else ""
        ratio_cpu = f"{r['median_cpu_ms'] / gelu_cpu:.1f}" if gelu_cpu else ""
        step = r.get("step_MiB", float("nan")) - step_floor
        print(f"| {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['median_cpu_ms']:.0f} | {ratio} | "
              f"{ratio_cpu} | {r['max_rss_MiB'] - floor:.0f} | {step:.0f} | {step / tensor_mib:.1f} |")
    pairs = [("torchortho5", "ortho5"), ("torchortho8", "ortho8"), ("naive8", "ortho8")]
    for suffix in sorted({re.sub(r"^(modular|masked|modlayer|maskedlayer)", "", v) for v in by}):
        pairs += [(f"masked{suffix}", f"modular{suffix}"), (f"maskedlayer{suffix}", f"modlayer{suffix}")]
    for a, b in pairs:
        if a in by and b in by:
            print(f"{a} / {b}: {by[a]['median_ms'] / by[b]['median_ms']:.1f}x wall, "
                  f"{by[a]['median_cpu_ms'] / by[b]['median_cpu_ms']:.1f}x CPU")
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
    # glibc's heap needs a few steps to settle: until then fresh outputs page-fault (~6 ms
    # per 16 MiB here) at some steps and not at others
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-step memory processes")
    args = ap.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
