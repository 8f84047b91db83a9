"""The typer app and the helpers every command uses (JSON output, error handling)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="permsym",
    help="Permutation symmetry, gradient noise and SGD equilibrium of neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# markup off: paths and architecture strings are user text, "[red]" in a file name stays literal
console = Console(stderr=True, markup=False)
# piped output (files, tests, CI logs) is not cut at 80 columns
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160, markup=False)


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    from permsym.io import json_safe

    sys.stdout.write(json.dumps(json_safe(obj), indent=2) + "\n")
    sys.stdout.flush()


DEVICE = typer.Option("--device", help="cpu | cuda | auto (auto: cuda when available)")
BACKEND = typer.Option("--backend", help="local (this machine, --jobs processes), ray (one task per unit) or submitit (one Slurm job per unit)")
ADDRESS = typer.Option("--address", help="Ray cluster address, e.g. 10.0.0.1:6379 (ray backend; default: RAY_ADDRESS or a local Ray)")
SUBMITIT_FOLDER = typer.Option("--submitit-folder", help="submitit's job pickles and logs, on a filesystem the nodes share (submitit backend; default: OUT/submitit)")
SUBMITIT_CLUSTER = typer.Option("--submitit-cluster", help="slurm, local (subprocesses of this machine) or auto (slurm when srun is on PATH) (submitit backend; default: auto)")
SLURM_PARTITION = typer.Option("--slurm-partition", help="Slurm partition (submitit backend; default: the cluster's)")
SLURM_TIME = typer.Option("--slurm-time", help="time limit of one unit's job, in minutes (submitit backend; default: 60)")
SLURM_CPUS = typer.Option("--slurm-cpus-per-task", help="CPUs (and torch threads) of one unit's job (submitit backend; default: 1)")


def submitit_options(folder: Any = None, cluster: str | None = None, partition: str | None = None,
                     time: int | None = None, cpus_per_task: int | None = None) -> dict[str, Any] | None:
    """The submitit backend's options that were given on the command line (``None``: none)."""
    given = {"folder": folder, "cluster": cluster, "partition": partition, "timeout_min": time,
             "cpus_per_task": cpus_per_task}
    return {k: v for k, v in given.items() if v is not None} or None


def device_for(device: str, command: str) -> Any:
    """Resolve ``--device`` (``auto`` -> cuda if available); ``cuda`` without CUDA is a one-line error."""
    from permsym.backends import resolve_device

    return resolve_device(device, call=command)


def to_device(model: Any, ds: Any, device: Any) -> tuple[Any, Any]:
    """The model and a :class:`~permsym.data.Dataset` moved to ``device`` (a no-op on the CPU)."""
    from dataclasses import replace

    return model.to(device), replace(ds, X=ds.X.to(device), y=ds.y.to(device))
