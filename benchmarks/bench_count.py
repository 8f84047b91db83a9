"""Time exact symmetry counting (no anchor library counts symmetry groups; see RESULTS.md).

    python benchmarks/bench_count.py [--repeats 5]

Masked MLP 784-1024-1024-10 at density 0.1 (issue target: exact in < 5 s), the same without
masks, and the closed form at width 10^6 (target: instant).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import permsym
from permsym.symmetry import count_symmetries, example_input, formula_log10_order


def median_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for arch in ["mlp:784-1024-1024-10,density=0.1,mask_seed=0", "mlp:784-1024-1024-10"]:
        model = permsym.build(arch)
        x = example_input(model)
        result = count_symmetries(model, x)
        t = median_time(lambda m=model, x=x: count_symmetries(m, x), args.repeats)
        rows.append((arch, result.log10_order, t))
    big = "mlp:784-1000000-1000000-10"
    rows.append((big + " (formula)", formula_log10_order(big), median_time(lambda: formula_log10_order(big), args.repeats)))
    print(f"{'architecture':<50} {'log10 |G|':>12} {'median s':>10}")
    for arch, order, t in rows:
        print(f"{arch:<50} {order:>12.2f} {t:>10.4f}")


if __name__ == "__main__":
    main()
