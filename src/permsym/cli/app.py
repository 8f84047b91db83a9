"""The typer app and the helpers every command uses (JSON output, error handling)."""

from __future__ import annotations

import json
import math
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

console = Console(stderr=True)
# piped output (files, tests, CI logs) is not cut at 80 columns
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings so the output stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    sys.stdout.write(json.dumps(_finite(obj), indent=2) + "\n")
    sys.stdout.flush()


DEVICE = typer.Option("--device", help="cpu | cuda | auto (auto: cuda when available)")
BACKEND = typer.Option("--backend", help="local (this machine, --jobs processes) or ray (one task per unit)")
ADDRESS = typer.Option("--address", help="Ray cluster address, e.g. 10.0.0.1:6379 (ray backend; default: RAY_ADDRESS or a local Ray)")


def device_for(device: str, command: str) -> Any:
    """Resolve ``--device`` (``auto`` -> cuda if available); ``cuda`` without CUDA is a one-line error."""
    from permsym.backends import resolve_device

    return resolve_device(device, call=command)


def to_device(model: Any, ds: Any, device: Any) -> tuple[Any, Any]:
    """The model and a :class:`~permsym.data.Dataset` moved to ``device`` (a no-op on the CPU)."""
    from dataclasses import replace

    return model.to(device), replace(ds, X=ds.X.to(device), y=ds.y.to(device))
