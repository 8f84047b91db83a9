"""``permsym train ARCH --data SPEC --out CHECKPOINT``: a deterministic SGD run to a trained point.

With ``--noise-every N`` (implied by ``--log``, ``--tensorboard`` and ``--temperature-schedule``)
gradient noise is measured every N steps; ``--temperature-schedule`` lets a
:class:`~permsym.train.TemperatureControl` set the learning rate so that $T$ follows the schedule.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Annotated, Any

import typer

from permsym.cli.app import DEVICE, app, console, device_for, print_json, stdout, to_device

_DEFAULT_EVERY = 10


def _noise_setup(
    schedule: str | None, every: int | None, log: str | None, tensorboard: str | None, method: str, lr: float,
    lr_min: float | None, lr_max: float | None,
) -> tuple[Any, int | None]:
    """Validate the noise options before any work; return (parsed schedule or None, every or None)."""
    from permsym.train.estimators import ESTIMATORS
    from permsym.train.schedule import parse_schedule

    parsed = parse_schedule(schedule) if schedule is not None else None
    if every is not None and every <= 0:
        raise ValueError(f"--noise-every must be a positive integer; got {every}.")
    if method not in ESTIMATORS:
        raise ValueError(f"--noise-method must be one of {', '.join(ESTIMATORS)}; got {method!r}.")
    for name, value in (("--lr-min", lr_min), ("--lr-max", lr_max)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be a number > 0; got {value}.")
    if parsed is None and (lr_min is not None or lr_max is not None):
        raise ValueError("--lr-min/--lr-max bound the temperature controller; pass --temperature-schedule too.")
    wanted = any(v is not None for v in (schedule, log, tensorboard))
    return parsed, every if every is not None else (_DEFAULT_EVERY if wanted else None)


@app.command()
def train(
    arch: Annotated[str, typer.Argument(help="architecture string, e.g. mlp:64-32-10,act=tanh")],
    data: Annotated[str, typer.Option("--data", help="data spec, e.g. digits or linear:n=1024,d=8")],
    out: Annotated[str, typer.Option("--out", help="checkpoint to write (.safetensors)")],
    epochs: Annotated[int, typer.Option(help="passes over the data")] = 20,
    lr: Annotated[float, typer.Option(help="learning rate (the start value under --temperature-schedule)")] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size", help="minibatch size")] = 32,
    seed: Annotated[int, typer.Option(help="initialisation and shuffling seed")] = 0,
    temperature_schedule: Annotated[str | None, typer.Option(
        "--temperature-schedule",
        help="target T: constant:T0=..|linear:T0=..,T_end=..|cosine:T0=..,T_end=.. (sets the lr)")] = None,
    noise_every: Annotated[int | None, typer.Option(
        "--noise-every", help=f"measure gradient noise every N steps (default {_DEFAULT_EVERY} when logging)")] = None,
    log: Annotated[str | None, typer.Option("--log", help="append one JSON line per measurement to FILE")] = None,
    tensorboard: Annotated[str | None, typer.Option("--tensorboard", help="also write TensorBoard scalars to DIR")] = None,
    noise_method: Annotated[str, typer.Option("--noise-method", help="auto, per-sample or micro-batch")] = "auto",
    lr_min: Annotated[float | None, typer.Option("--lr-min", help="controller's lower lr bound (default lr/1000)")] = None,
    lr_max: Annotated[float | None, typer.Option("--lr-max", help="controller's upper lr bound (default 10*lr)")] = None,
    curvature_every: Annotated[int, typer.Option(
        "--curvature-every", help="re-estimate lambda_max (eta*lambda_max < 2) every N steps")] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Train ARCH on SPEC by SGD; the checkpoint is rewritten (atomically) after every epoch."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from permsym.archs import build
    from permsym.data import check_fits, load_dataset
    from permsym.io import save
    from permsym.train import NoiseMonitor, StabilityWarning, TemperatureControl, fit
    from permsym.train.logs import JsonlLog, TensorBoardLog

    schedule, every = _noise_setup(temperature_schedule, noise_every, log, tensorboard, noise_method, lr, lr_min, lr_max)
    if curvature_every <= 0:
        raise ValueError(f"--curvature-every must be a positive integer; got {curvature_every}.")
    dev = device_for(device, "train")
    ds = load_dataset(data)
    model = build(arch, seed=seed)  # initial weights drawn on the CPU: the same on every device
    check_fits(model, ds.X, ds.y, ds.task, spec=data)
    model, ds = to_device(model, ds, dev)
    meta: dict[str, Any] = {"data": data, "lr": lr, "batch_size": batch_size, "seed": seed}
    if schedule is not None:
        meta["temperature_schedule"] = str(schedule)
    with contextlib.ExitStack() as stack, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StabilityWarning)
        sinks: list[Any] = []
        if log is not None:
            sinks.append(stack.enter_context(JsonlLog(log)))
        if tensorboard is not None:
            sinks.append(stack.enter_context(TensorBoardLog(tensorboard)))
        progress = stack.enter_context(Progress(
            TextColumn("train"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[noise]}"), TimeElapsedColumn(),
            console=console, transient=True, disable=json_out or not console.is_terminal,
        ))
        task = progress.add_task("train", total=epochs, loss="-", noise="")
        sinks.append(lambda m: progress.update(task, noise=f"T {m.temperature:.3g} trC {m.trace_C:.3g} lr {m.lr:.3g}"))
        monitor = NoiseMonitor(every=every, method=noise_method, sinks=sinks) if every is not None else None
        controller = None
        if schedule is not None:
            import torch

            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            controller = TemperatureControl(
                optimizer, schedule, lr_min=lr_min if lr_min is not None else lr / 1000,
                lr_max=lr_max if lr_max is not None else 10 * lr, curvature_every=curvature_every,
                generator=torch.Generator().manual_seed(seed),
            )

        def on_epoch(epoch: int, loss: float) -> None:
            save(model, out, metadata={**meta, "epochs": epoch, "train_loss": loss})
            progress.update(task, completed=epoch, loss=f"{loss:.4g}")

        history = fit(model, ds, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, on_epoch=on_epoch,
                      monitor=monitor, controller=controller)
    refused = [w for w in caught if issubclass(w.category, StabilityWarning)]
    if refused:
        console.print(f"permsym train: {len(refused)} learning rate(s) refused; first: {refused[0].message}",
                      markup=False, highlight=False, soft_wrap=True)
    payload: dict[str, Any] = {"checkpoint": out, "arch": arch, "data": data, "final_loss": history.losses[-1], **history.to_json()}
    last = monitor.measurements[-1] if monitor is not None and monitor.measurements else None
    if monitor is not None:
        payload["noise"] = {"every": every, "measurements": len(monitor.measurements), "log": log,
                            "last": last.to_json() if last else None}
    if controller is not None:
        payload["controller"] = controller.to_json()
    if json_out:
        print_json(payload)
        return
    stdout.print(f"{arch} on {data}: {history.steps} steps, final train loss {history.losses[-1]:.5g} -> {out}")
    if last is not None:
        target = f" (target {last.target_temperature:.4g})" if last.target_temperature is not None else ""
        stdout.print(f"last noise measurement (step {last.step}): T = {last.temperature:.4g}{target}, "
                     f"tr C = {last.trace_C:.4g}, |g|^2 = {last.grad_norm_sq:.4g}, lr = {last.lr:.4g}; "
                     f"{len(monitor.measurements) if monitor else 0} measurements" + (f" -> {log}" if log else ""))
