"""Seed sweeps: a grid of architectures x learning rates x seeds, one cached unit per chunk of seeds.

A sweep is written in a small JSON or TOML file (validated by :class:`SweepConfig`)::

    archs = ["mlp:8-16-1", "mlp:8-32-1"]
    data = "linear:n=256,d=8"
    lrs = [0.05, 0.1]
    seeds = 4               # or a list: [0, 1, 7]
    epochs = 5
    batch_size = 32
    seeds_per_unit = 2      # seeds trained together (vmap) in one unit

Each unit (one architecture, one learning rate, ``seeds_per_unit`` seeds) trains with
:func:`permsym.ensemble.train` and is cached in ``OUT/units/`` under the hash of its config, so
an interrupted sweep resumes; ``OUT/sweep.json`` holds one record per (arch, lr, seed), in grid
order. Units are independent, so any backend (``local``, ``ray``, ``submitit``) gives the same file.
"""

from __future__ import annotations

import json
import tomllib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from permsym._errors import PermsymError

__all__ = ["SweepConfig", "load_sweep_config", "run_sweep", "sweep_unit", "sweep_units"]

VERSION = 1  # bump when sweep_unit changes what a config computes


class SweepConfig(BaseModel):
    """The grid of a sweep; unknown fields are an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    archs: list[str] = Field(min_length=1)
    data: str
    lrs: list[PositiveFloat] = Field(min_length=1)
    seeds: list[int] | PositiveInt
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32
    seeds_per_unit: PositiveInt = 1
    dtype: Literal["float32", "float64"] = "float32"

    @field_validator("archs")
    @classmethod
    def _archs(cls, archs: list[str]) -> list[str]:
        from permsym.archs import parse

        for arch in archs:
            _check(parse, arch)
        return archs

    @field_validator("data")
    @classmethod
    def _data(cls, data: str) -> str:
        from permsym.data import parse_spec

        _check(parse_spec, data)
        return data

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | int) -> list[int] | int:
        if isinstance(seeds, list):
            if not seeds:
                raise ValueError("must not be empty (give a list of seeds or a count)")
            if len(set(seeds)) != len(seeds):
                raise ValueError("must not repeat a seed")
        return seeds

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def _check(parse: Any, value: str) -> None:
    """Run a permsym parser; its error (a PermsymError too) becomes a ValueError pydantic reports."""
    try:
        parse(value)
    except (PermsymError, ValueError) as exc:
        raise ValueError(" ".join(str(exc).split())) from None


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def _one_line(exc: ValidationError, source: str) -> str:
    """The first validation error as ``sweep: SOURCE: FIELD must be ...; got VALUE.``"""
    err = exc.errors()[0]
    where, kind, value = _loc(tuple(err["loc"])), err["type"], err.get("input")
    if kind == "extra_forbidden":
        fields = ", ".join(SweepConfig.model_fields)
        return f"sweep: {source}: unknown field {where!r}; expected one of {fields}."
    if kind == "missing":
        return f"sweep: {source}: field {where!r} is required."
    msg = str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be").rstrip(".")
    if kind == "value_error" and not msg.startswith("must"):  # a parser's own message says it all
        return f"sweep: {source}: {where}: {msg.removeprefix('data: ')}."
    if "; got" in msg:
        return f"sweep: {source}: {where} {msg}."
    if not msg.startswith("must"):
        msg = f"must be valid: {msg}"
    return f"sweep: {source}: {where} {msg}; got {value!r}."


def load_sweep_config(source: str | Path | dict[str, Any]) -> SweepConfig:
    """Read and validate a sweep config from a ``.json``/``.toml`` file or a dict.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: one line naming the first bad field, what it must be, and the value.

    Examples:
        >>> load_sweep_config({"archs": ["mlp:2-4-1"], "data": "linear:n=8,d=2", "lrs": [0.1], "seeds": 2}).seed_list
        [0, 1]
        >>> load_sweep_config({"archs": ["mlp:2-4-1"], "data": "linear:n=8,d=2", "lrs": [-1], "seeds": 2})
        Traceback (most recent call last):
        ...
        ValueError: sweep: config: lrs[0] must be greater than 0; got -1.
    """
    name = "config"
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        name = path.name
        if not path.is_file():
            raise FileNotFoundError(f"sweep: config file {str(path)!r} does not exist.")
        text = path.read_text()
        try:
            if path.suffix == ".toml":
                raw = tomllib.loads(text)
            elif path.suffix == ".json":
                raw = json.loads(text)
            else:
                raise ValueError(f"sweep: config file must end in .json or .toml; got {path.name!r}.")
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"sweep: {name} is not valid {path.suffix[1:].upper()}: {exc}.") from None
        if not isinstance(raw, dict):
            raise ValueError(f"sweep: {name} must hold one object of fields; got {type(raw).__name__}.")
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_one_line(exc, name)) from None


def sweep_unit(unit: dict[str, Any], device: str = "cpu") -> list[dict[str, Any]]:
    """Train one unit (one arch, one lr, a few seeds); one record per seed."""
    import torch

    from permsym.backends import resolve_device
    from permsym.ensemble import train

    dev = resolve_device(device, call="sweep")
    dtype = getattr(torch, unit["dtype"])
    with warnings.catch_warnings():  # a unit that falls back to a loop says so in its records
        warnings.filterwarnings("ignore", message=r"ensemble\.train: .* one after another", category=UserWarning)
        result = train(unit["arch"], unit["data"], unit["seeds"], epochs=unit["epochs"], lr=unit["lr"],
                       batch_size=unit["batch_size"], dtype=dtype, device=dev)
    return [{"arch": unit["arch"], "lr": unit["lr"], "seed": seed, "metric": "final_loss", "value": losses[-1],
             "losses": list(losses), "vectorised": result.vectorised}
            for seed, losses in zip(result.seeds, result.losses, strict=True)]


def _units_of(config: SweepConfig) -> list[dict[str, Any]]:
    seeds, k = config.seed_list, config.seeds_per_unit
    return [{"arch": arch, "data": config.data, "lr": lr, "seeds": seeds[i : i + k], "epochs": config.epochs,
             "batch_size": config.batch_size, "dtype": config.dtype}
            for arch in config.archs for lr in config.lrs for i in range(0, len(seeds), k)]


def sweep_units(config: SweepConfig, out: Path, *, device: str = "cpu") -> list[Any]:
    """The sweep's units as ``(path, header, fn, args)`` for :func:`permsym.experiments.runner.run_units`."""
    from permsym.experiments.base import config_key

    suffix = "" if device == "cpu" else f"-{device}"
    units_dir = Path(out) / "units"
    return [(units_dir / f"sweep-{config_key('sweep', u, VERSION)}{suffix}.json", {"experiment": "sweep", "config": u},
             _call_unit, (u, device)) for u in _units_of(config)]


def _call_unit(unit: dict[str, Any], device: str) -> list[dict[str, Any]]:
    # read from the module when the units are built: a test may wrap it (slow units that leave markers)
    return sweep_unit(unit, device)


def run_sweep(
    config: SweepConfig | str | Path | dict[str, Any],
    out: str | Path,
    *,
    backend: str = "local",
    jobs: int = 1,
    address: str | None = None,
    device: str = "cpu",
    resume: bool = True,
    show_progress: bool = False,
    backend_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every unit of the sweep on ``backend``; write and return ``OUT/sweep.json``.

    Args:
        config: a :class:`SweepConfig`, a ``.json``/``.toml`` path or a dict.
        backend, jobs, address, backend_options: as :func:`permsym.experiments.run_experiments`.
        device: ``cpu``, ``cuda`` or ``auto``; with ``ray`` or ``submitit``, ``cuda`` is checked
            on the workers (each unit reserves one GPU there).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from permsym.backends import make_executor, resolve_device
    from permsym.experiments.runner import _write_json, backend_options_for, run_units

    cfg = config if isinstance(config, SweepConfig) else load_sweep_config(config)
    dev = device if backend in ("ray", "submitit") and device == "cuda" else resolve_device(device, call="sweep").type
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    plan = sweep_units(cfg, out, device=dev)
    todo = [u for u in plan if not (resume and u[0].is_file())]
    executor = make_executor(backend, jobs=jobs, address=address, num_gpus=1 if dev == "cuda" else 0, call="sweep",
                             options=backend_options_for(backend, backend_options, out))
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress, executor:
        task = progress.add_task("sweep", total=len(plan), completed=len(plan) - len(todo))
        run_units(todo, executor, on_done=lambda _: progress.advance(task))
    records: list[dict[str, Any]] = []
    for path, _, _, _ in plan:
        records.extend(json.loads(path.read_text())["records"])
    results = {"config": cfg.model_dump(), "device": dev, "records": records}
    _write_json(out / "sweep.json", results)
    if len(records) != len(cfg.archs) * len(cfg.lrs) * len(cfg.seed_list):  # pragma: no cover - a cache bug
        raise PermsymError(f"sweep: expected {len(cfg.archs) * len(cfg.lrs) * len(cfg.seed_list)} records; got {len(records)}.")
    return results
