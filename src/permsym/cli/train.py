"""``permsym train ARCH --data SPEC --out CHECKPOINT``: a deterministic SGD run to a trained point."""

from __future__ import annotations

from typing import Annotated

import typer

from permsym.cli.app import app, console, print_json, stdout


@app.command()
def train(
    arch: Annotated[str, typer.Argument(help="architecture string, e.g. mlp:64-32-10,act=tanh")],
    data: Annotated[str, typer.Option("--data", help="data spec, e.g. digits or linear:n=1024,d=8")],
    out: Annotated[str, typer.Option("--out", help="checkpoint to write (.safetensors)")],
    epochs: Annotated[int, typer.Option(help="passes over the data")] = 20,
    lr: Annotated[float, typer.Option(help="learning rate")] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size", help="minibatch size")] = 32,
    seed: Annotated[int, typer.Option(help="initialisation and shuffling seed")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Train ARCH on SPEC by plain SGD; the checkpoint is rewritten (atomically) after every epoch."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from permsym.archs import build
    from permsym.data import check_fits, load_dataset
    from permsym.io import save
    from permsym.train import fit

    ds = load_dataset(data)
    model = build(arch, seed=seed)
    check_fits(model, ds.X, ds.y, ds.task, spec=data)
    meta = {"data": data, "lr": lr, "batch_size": batch_size, "seed": seed}
    with Progress(
        TextColumn("train"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console, transient=True,
        disable=json_out or not console.is_terminal,
    ) as progress:
        task = progress.add_task("train", total=epochs, loss="-")

        def on_epoch(epoch: int, loss: float) -> None:
            save(model, out, metadata={**meta, "epochs": epoch, "train_loss": loss})
            progress.update(task, completed=epoch, loss=f"{loss:.4g}")

        history = fit(model, ds, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, on_epoch=on_epoch)
    payload = {"checkpoint": out, "arch": arch, "data": data, "final_loss": history.losses[-1], **history.to_json()}
    if json_out:
        print_json(payload)
    else:
        stdout.print(f"{arch} on {data}: {history.steps} steps, final train loss {history.losses[-1]:.5g} -> {out}")
