"""``permsym align``, ``permsym stability`` and ``permsym track`` over checkpoints."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from permsym.cli.app import DEVICE, app, device_for, print_json, stdout

_METHOD = typer.Option("--method", help="sort | sorensen | weight | activation")
_DATA = typer.Option("--data", help="data spec (activation method, loss barriers), e.g. digits")
_JSON = typer.Option("--json", help="print one JSON object")


def _load_all(paths: list[str], device: str, command: str) -> list[Any]:
    from permsym.io import load

    dev = device_for(device, command)
    return [load(p).to(dev) for p in paths]


@app.command("align")
def align_cmd(
    reference: Annotated[str, typer.Argument(help="reference checkpoint")],
    other: Annotated[str, typer.Argument(help="checkpoint to align onto the reference")],
    method: Annotated[str, _METHOD] = "weight",
    out: Annotated[str | None, typer.Option("--out", help="write the aligned checkpoint here")] = None,
    data: Annotated[str | None, _DATA] = None,
    restarts: Annotated[int, typer.Option(help="weight matching: best of k sweep orders")] = 1,
    json_out: Annotated[bool, _JSON] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Permute the units of OTHER to match REFERENCE (the function of OTHER is unchanged)."""
    from permsym.alignment import align
    from permsym.io import save

    model_a, model_b = _load_all([reference, other], device, "align")
    result = align(model_a, model_b, method=method, data=data, restarts=restarts)
    if out is not None:
        save(result.model, out, metadata={"aligned_to": reference, "aligned_from": other, "method": method})
    payload = {"reference": reference, "other": other, "out": out, **result.to_json()}
    if json_out:
        print_json(payload)
        return
    stdout.print(f"{method} alignment of {other} onto {reference}: objective {result.objective_identity:.6g} -> "
                 f"{result.objective:.6g}, distance {result.distance_before:.6g} -> {result.distance_after:.6g}"
                 f" ({result.sweeps} sweeps)")
    table = Table()
    for col in ("group", "units", "re-ordered", "mean similarity"):
        table.add_column(col, justify="left" if col == "group" else "right")
    moved = result.reordered_units()
    for g, sim in result.similarity.items():
        table.add_row(g, str(sim.numel()), str(moved[g]), f"{float(sim.mean()):.4f}")
    stdout.print(table)
    for note in result.notes:
        stdout.print(f"note: {note}")
    if out is not None:
        stdout.print(f"aligned checkpoint -> {out}")


def _plot(report: Any, path: str) -> None:
    from matplotlib.figure import Figure

    from permsym.io import atomic_write

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    names = [row["name"] for row in report.layers]
    pos = range(len(names))
    ax1.barh([p + 0.2 for p in pos], [row["rms_before"] for row in report.layers], 0.4, label="before")
    ax1.barh([p - 0.2 for p in pos], [row["rms_after"] for row in report.layers], 0.4, label="after")
    ax1.set_yticks(list(pos), names, fontsize=7)
    ax1.set_xlabel("RMS distance to consensus")
    ax1.legend()
    ax2.bar([g["group"] for g in report.groups], [g["stable_fraction"] for g in report.groups])
    ax2.set_ylim(0, 1)
    ax2.set_ylabel(f"stable units (similarity > {report.threshold:g})")
    suffix = path.rsplit(".", 1)[-1] if "." in path else "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix))


@app.command()
def stability(
    checkpoints: Annotated[list[str], typer.Argument(help="checkpoints of one architecture (>= 2)")],
    method: Annotated[str, _METHOD] = "weight",
    reference: Annotated[str, typer.Option("--reference", help="first | medoid")] = "first",
    data: Annotated[str | None, _DATA] = None,
    threshold: Annotated[float, typer.Option(help="similarity above which a unit is stable")] = 0.9,
    plot: Annotated[str | None, typer.Option("--plot", help="write a figure (png, pdf, svg)")] = None,
    json_out: Annotated[bool, _JSON] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Align all checkpoints to a reference: consensus distance, stable units, loss barriers."""
    from permsym.alignment.metrics import stability as measure

    report = measure(_load_all(checkpoints, device, "stability"), method=method, reference=reference, data=data, threshold=threshold)
    if plot is not None:
        _plot(report, plot)
    if json_out:
        print_json({"checkpoints": checkpoints, **report.to_json()})
        return
    stdout.print(f"{len(checkpoints)} checkpoints, {method} alignment to {checkpoints[report.reference]} "
                 f"({reference}); RMS distance to consensus {report.rms_to_consensus_before:.6g} -> "
                 f"{report.rms_to_consensus_after:.6g}; stable units {report.stable_unit_fraction:.1%}")
    if report.barrier_before is not None:
        stdout.print(f"loss barrier {report.barrier_before:.6g} -> {report.barrier_after:.6g}")
    layers = Table(title="per tensor")
    for col in ("tensor", "RMS before", "RMS after"):
        layers.add_column(col, justify="left" if col == "tensor" else "right")
    for row in report.layers:
        layers.add_row(row["name"], f"{row['rms_before']:.5g}", f"{row['rms_after']:.5g}")
    groups = Table(title="per group")
    for col in ("group", "units", "stable", "mean similarity"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    for g in report.groups:
        groups.add_row(g["group"], str(g["units"]), f"{g['stable_fraction']:.1%}", f"{g['mean_similarity']:.4f}")
    stdout.print(layers)
    stdout.print(groups)


@app.command()
def track(
    checkpoints: Annotated[list[str], typer.Argument(help="a sequence of retrained checkpoints, in order")],
    method: Annotated[str, _METHOD] = "weight",
    data: Annotated[str | None, _DATA] = None,
    json_out: Annotated[bool, _JSON] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Drift of a sequence of checkpoints: aligned next to naive, and the re-ordered units."""
    from permsym.alignment.metrics import track as measure

    report = measure(_load_all(checkpoints, device, "track"), method=method, data=data)
    if json_out:
        print_json({"checkpoints": checkpoints, **report.to_json()})
        return
    table = Table(title=f"drift per step ({method} alignment)")
    for col in ("step", "naive drift", "aligned drift", "re-ordered units"):
        table.add_column(col, justify="right")
    for s in report.steps:
        table.add_row(f"{checkpoints[s['step'] - 1]} -> {checkpoints[s['step']]}", f"{s['naive_drift']:.5g}",
                      f"{s['aligned_drift']:.5g}", str(s["reordered_units"]))
    stdout.print(table)
