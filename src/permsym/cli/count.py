"""``permsym count ARCH...`` and ``permsym info CHECKPOINT``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from permsym.cli.app import DEVICE, app, device_for, print_json, stdout

ODD_ACTIVATIONS = {"tanh", "identity"}


def _count_table(rows: list[dict]) -> Table:
    table = Table(title="Equivalent optima (log10 of the symmetry group order)")
    for col in (
        "architecture",
        "groups",
        "log10 |G|",
        "formula prod w!",
        "with sign flips",
        "orbit",
        "seconds",
    ):
        table.add_column(col, justify="left" if col == "architecture" else "right", overflow="fold")
    for r in rows:
        flips = r["log10_order_with_sign_flips"]
        table.add_row(
            r["arch"],
            str(len(r["groups"])),
            f"{r['log10_order']:.2f}",
            f"{r['log10_order_unmasked']:.2f}",
            "-" if flips is None else f"{flips:.2f}",
            f"{r['log10_orbit']:.2f}",
            f"{r['seconds']:.2f}",
        )
    return table


@app.command()
def count(
    archs: Annotated[
        list[str], typer.Argument(help="architecture strings, e.g. mlp:784-1024-1024-10")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    seed: Annotated[int, typer.Option(help="initialisation seed (orbit of the initial point)")] = 0,
    formula: Annotated[
        bool,
        typer.Option("--formula", help="closed form prod w_k! only, without building (any width)"),
    ] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Count the equivalent optima of architectures: exact symmetry group order (log10)."""
    from permsym.archs import build, parse
    from permsym.symmetry import (
        count_symmetries,
        example_input,
        formula_group_sizes,
        formula_log10_order,
    )

    dev = device_for(device, "count")
    if formula:
        rows_f = []
        for arch in archs:
            spec = parse(arch)
            odd = spec.family == "mlp" and spec.options["act"] in ODD_ACTIVATIONS
            rows_f.append(
                {
                    "arch": arch,
                    "group_sizes": formula_group_sizes(arch),
                    "log10_order_unmasked": formula_log10_order(arch),
                    "log10_order_with_sign_flips": formula_log10_order(arch, sign_flips=True)
                    if odd
                    else None,
                }
            )
        if json_out:
            print_json({"results": rows_f})
        else:
            for r in rows_f:
                flips = r["log10_order_with_sign_flips"]
                extra = "" if flips is None else f" (with sign flips {flips:.2f})"
                stdout.print(f"{r['arch']}: log10 prod w! = {r['log10_order_unmasked']:.2f}{extra}")
        return
    rows = []
    for arch in archs:
        model = build(arch, seed=seed).to(dev)
        result = count_symmetries(model, example_input(model).to(dev))
        rows.append({"arch": arch, **result.to_json()})
    if json_out:
        print_json({"results": rows})
    else:
        stdout.print(_count_table(rows))


@app.command()
def info(
    checkpoint: Annotated[str, typer.Argument(help="a permsym .safetensors checkpoint")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Describe a checkpoint: architecture, parameters, symmetry group and orbit."""
    from permsym.io import load as load_checkpoint
    from permsym.io import load_state
    from permsym.symmetry import count_symmetries, example_input

    dev = device_for(device, "info")
    model = load_checkpoint(checkpoint).to(dev)
    _, meta = load_state(checkpoint)
    result = count_symmetries(model, example_input(model).to(dev))
    num_params = sum(p.numel() for p in model.parameters())
    payload = {
        "checkpoint": checkpoint,
        "arch": meta["arch"],
        "metadata": {k: v for k, v in meta.items() if k != "arch"},
        "num_params": num_params,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **result.to_json(),
    }
    if json_out:
        print_json(payload)
        return
    stdout.print(
        f"{checkpoint}: {meta['arch']}, {num_params:,} parameters, {payload['dtype']}"
    )
    stdout.print(_count_table([{"arch": meta["arch"], **result.to_json()}]))
