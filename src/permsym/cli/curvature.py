"""``permsym hessian``, ``permsym noise`` and ``permsym equilibrium`` on a checkpoint."""

from __future__ import annotations

import warnings
from typing import Annotated, Any

import typer

from permsym.cli.app import DEVICE, app, device_for, print_json, stdout, to_device


def _load(checkpoint: str, data: str, call: str, device: str = "cpu") -> tuple[Any, Any, Any]:
    from permsym.data import check_fits, load_dataset, loss_fn_for
    from permsym.io import load

    dev = device_for(device, call.removeprefix("permsym "))
    model = load(checkpoint)
    dtype = next(model.parameters()).dtype
    ds = load_dataset(data, dtype=dtype)
    check_fits(model, ds.X, ds.y, ds.task, spec=data)
    model, ds = to_device(model, ds, dev)
    return model, ds, loss_fn_for(ds.task)


def _positive(call: str, what: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be > 0; got {value!r}.")


@app.command()
def hessian(
    checkpoint: Annotated[str, typer.Argument(help="a permsym checkpoint")],
    data: Annotated[str, typer.Option("--data", help="data spec the loss is taken over")],
    top_k: Annotated[int, typer.Option("--top-k", help="number of top eigenvalues")] = 5,
    trace: Annotated[bool, typer.Option("--trace", help="also estimate tr H (Hutch++)")] = False,
    density: Annotated[bool, typer.Option("--density", help="also the spectral density (SLQ)")] = False,
    tol: Annotated[float, typer.Option(help="relative residual tolerance of the eigenpairs")] = 1e-6,
    seed: Annotated[int, typer.Option(help="seed of the random start and probe vectors")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Top Hessian eigenvalues (Lanczos), optionally its trace and spectral density."""
    import torch

    from permsym.curvature import hessian_top_eigenvalues, hessian_trace, spectral_density

    if top_k < 1:
        raise ValueError(f"--top-k must be a positive integer; got {top_k}.")
    model, ds, loss_fn = _load(checkpoint, data, "permsym hessian", device)
    gen = torch.Generator().manual_seed(seed)
    top = hessian_top_eigenvalues(model, loss_fn, ds, top_k, tol=tol, generator=gen)
    payload: dict[str, Any] = {"checkpoint": checkpoint, "data": data, **top.to_json()}
    if trace:
        payload["trace"] = hessian_trace(model, loss_fn, ds, generator=gen).to_json()
    if density:
        payload["density"] = spectral_density(model, loss_fn, ds, generator=gen).to_json()
    if json_out:
        print_json(payload)
        return
    stdout.print(f"{checkpoint} on {data}: {top.num_params:,} parameters, {top.num_matvecs} Hessian-vector products")
    stdout.print("top eigenvalues: " + ", ".join(f"{v:.6g}" for v in top.eigenvalues))
    if trace:
        t = payload["trace"]
        stdout.print(f"trace: {t['estimate']:.6g} +- {t['stderr']:.2g} (Hutch++, {t['num_matvecs']} products)")
    if density:
        stdout.print(f"spectral mass with |lambda| < 1% lambda_max: {payload['density']['fraction_near_zero']:.3f}")


@app.command()
def noise(
    checkpoint: Annotated[str, typer.Argument(help="a permsym checkpoint")],
    data: Annotated[str, typer.Option("--data", help="data spec")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="SGD batch size B")],
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate eta")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Gradient noise: tr C, |g|^2, noise scale tr C/|g|^2 and temperature eta tr C / (2 B P)."""
    from permsym.noise import gradient_noise

    _positive("permsym noise", "--lr", lr)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer; got {batch_size}.")
    model, ds, loss_fn = _load(checkpoint, data, "permsym noise", device)
    result = gradient_noise(model, loss_fn, ds, batch_size=batch_size, lr=lr)
    payload = {"checkpoint": checkpoint, "data": data, **result.to_json()}
    if json_out:
        print_json(payload)
        return
    stdout.print(
        f"tr C = {result.trace_C:.6g}, |g|^2 = {result.grad_norm_sq:.6g}, noise scale = {result.noise_scale:.6g}, "
        f"temperature = {result.temperature:.6g} ({result.num_params:,} parameters, B = {batch_size}, lr = {lr:g})"
    )


@app.command()
def equilibrium(
    checkpoint: Annotated[str, typer.Argument(help="a trained permsym checkpoint")],
    data: Annotated[str, typer.Option("--data", help="data spec")],
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate eta")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="SGD batch size B")],
    steps: Annotated[int, typer.Option("--steps", help="SGD steps measured after burn-in")],
    burn_in: Annotated[int | None, typer.Option("--burn-in", help="steps discarded first (default steps/5)")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Hessian eigen-directions compared")] = 5,
    sampling: Annotated[str, typer.Option(help="with_replacement | without_replacement | epochs")] = "with_replacement",
    seed: Annotated[int, typer.Option(help="seed of the minibatch draws")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: Annotated[str, DEVICE] = "cpu",
) -> None:
    """Predicted (Lyapunov) vs measured stationary variance of SGD along top Hessian directions."""
    import torch

    from permsym.equilibrium import NoEquilibriumWarning, equilibrium_comparison

    _positive("permsym equilibrium", "--lr", lr)
    for what, value in (("--batch-size", batch_size), ("--steps", steps), ("--top-k", top_k)):
        if value < 1:
            raise ValueError(f"{what} must be a positive integer; got {value}.")
    model, ds, _ = _load(checkpoint, data, "permsym equilibrium", device)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoEquilibriumWarning)
        try:
            result = equilibrium_comparison(model, ds, lr=lr, batch_size=batch_size, steps=steps, burn_in=burn_in,
                                            top_k=top_k, sampling=sampling,
                                            generator=torch.Generator().manual_seed(seed))
        except NoEquilibriumWarning as exc:
            raise ValueError(str(exc).replace("equilibrium_comparison: ", "")) from None
    payload = {"checkpoint": checkpoint, "data": data, **result.to_json()}
    if json_out:
        print_json(payload)
        return
    from rich.table import Table

    table = Table(title=f"SGD equilibrium (lr={lr:g}, B={batch_size}, eta*lambda_max={result.eta_lambda_max:.3g})")
    for col in ("lambda", "predicted", "exact (linear)", "measured", "95% interval", "ratio"):
        table.add_column(col, justify="right")
    for d in result.directions:
        exact = d.get("predicted_variance_exact")
        table.add_row(f"{d['eigenvalue']:.4g}", f"{d['predicted_variance']:.4g}", "-" if exact is None else f"{exact:.4g}",
                      f"{d['measured_variance']:.4g}", f"[{d['ci_low']:.4g}, {d['ci_high']:.4g}]", f"{d['ratio']:.3f}")
    stdout.print(table)
    e = result.excess_loss
    stdout.print(f"excess loss: predicted {e['predicted']:.4g} ({e['method']}), measured {e['measured']:.4g} "
                 f"[{e['ci_low']:.4g}, {e['ci_high']:.4g}]")
