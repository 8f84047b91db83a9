"""Run experiments unit by unit with a cache keyed by config hash; write results and report.

Every unit's records are written atomically to ``OUT/units/<experiment>-<hash>.json`` as
soon as it finishes, so a run killed at any moment (even SIGKILL) resumes where it stopped
and ends with the same ``results.json`` as an uninterrupted run.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from permsym._errors import PermsymError
from permsym.experiments.base import SCALES, Experiment, config_key, file_stem
from permsym.io import atomic_write, json_safe

# One unit of cached work: the file its result goes to, the fields written next to the
# records, the function that computes the records and its arguments (picklable).
Unit = tuple[Path, dict[str, Any], Callable[..., list[dict[str, Any]]], tuple[Any, ...]]


def _write_json(path: Path, obj: Any, *, strict: bool = False) -> None:
    """Unit caches keep NaN/inf as Python writes them (they round-trip); ``strict`` files are
    standard JSON, with non-finite numbers as strings."""
    text = json.dumps(json_safe(obj) if strict else obj, indent=2, sort_keys=True, allow_nan=not strict) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _run_unit(experiment: Experiment, config: dict[str, Any], torch_threads: int | None,
              device: str = "cpu") -> list[dict[str, Any]]:
    from permsym._threads import limited_threads

    with limited_threads(torch_threads=torch_threads, blas_threads=1):
        if device != "cpu" and _takes_device(experiment):
            return experiment.run_unit(config, device=device)  # type: ignore[call-arg]
        return experiment.run_unit(config)


def _takes_device(experiment: Experiment) -> bool:
    """Whether ``run_unit`` accepts ``device=`` (experiments without it compute on the CPU)."""
    return "device" in inspect.signature(experiment.run_unit).parameters


def run_units(units: Sequence[Unit], executor: Any, *, on_done: Callable[[Unit], None] | None = None) -> None:
    """Run every unit on ``executor``; the driver (this process) writes each result atomically.

    A unit's file is ``{**header, "records": fn(*args)}``. Files are written as units finish,
    whatever the backend, so an interrupted run keeps every finished unit.
    """
    tickets = {executor.submit(fn, *args): (path, header, fn, args) for path, header, fn, args in units}
    done: set[int] = set()
    for ticket, records in executor.as_completed():
        if ticket in done:  # an executor must not give a ticket twice; never write twice
            raise PermsymError(f"run_units: unit {ticket} was returned twice by the {executor.name} backend.")
        done.add(ticket)
        path, header, _, _ = tickets[ticket]
        _write_json(path, {**header, "records": records})
        if on_done is not None:
            on_done(tickets[ticket])
    missing = sorted(set(tickets) - done)
    if missing:
        raise PermsymError(f"run_units: the {executor.name} backend returned no result for units {missing}.")


def run_experiments(
    experiments: Sequence[Experiment],
    out: Path,
    *,
    scale: str = "quick",
    resume: bool = True,
    jobs: int = 1,
    show_progress: bool = True,
    backend: str = "local",
    address: str | None = None,
    device: str = "cpu",
    backend_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every unit, then write ``results.json``, one PNG per experiment and ``index.html``.

    Args:
        backend: ``local`` (``jobs`` processes; 1 = in this process), ``ray`` (one Ray task
            per unit on the cluster at ``address``) or ``submitit`` (one Slurm job per unit);
            the results are the same.
        backend_options: options of the ``submitit`` backend (see
            :func:`permsym.backends.make_executor`); its ``folder`` defaults to ``OUT/submitit``.
        device: ``cpu``, ``cuda`` or ``auto``, for experiments whose ``run_unit`` takes
            ``device=``; others compute on the CPU. Units computed on another device than
            the CPU are cached apart (``...-cuda.json``): their numbers differ in rounding.
    """
    from permsym.backends import make_executor, resolve_device
    from permsym.report import write_report

    if scale not in SCALES:
        raise PermsymError(f"paper: scale must be one of {', '.join(SCALES)}; got {scale!r}.")
    if jobs < 1:
        raise ValueError(f"paper: jobs must be a positive integer; got {jobs}.")
    dev = resolve_device(device, call="paper").type
    out = Path(out)
    units_dir = out / "units"
    units_dir.mkdir(parents=True, exist_ok=True)
    plan = []
    for exp in experiments:
        suffix = "" if dev == "cpu" or not _takes_device(exp) else f"-{dev}"
        for cfg in exp.units(scale):
            plan.append((exp, cfg, units_dir / f"{file_stem(exp.name)}-{config_key(exp.name, cfg, exp.version)}{suffix}.json"))
    todo = [(exp, cfg, path) for exp, cfg, path in plan if not (resume and path.is_file())]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    executor = make_executor(backend, jobs=jobs, address=address, num_gpus=1 if dev == "cuda" else 0, call="paper",
                             options=backend_options_for(backend, backend_options, out))
    with Progress(*columns, disable=not show_progress, transient=False) as progress, executor:
        task = progress.add_task("paper", total=len(plan), completed=len(plan) - len(todo))
        units: list[Unit] = [(path, {"experiment": exp.name, "config": cfg}, _run_unit, (exp, cfg, executor.torch_threads, dev))
                             for exp, cfg, path in todo]

        def advance(unit: Unit) -> None:
            progress.update(task, description=f"{unit[1]['experiment']} {_short(unit[1]['config'])}")
            progress.advance(task)

        run_units(units, executor, on_done=advance)
    results = _collect(experiments, plan, scale)
    for exp in experiments:
        recs = [r for r in results["records"] if r["experiment"] == exp.name]
        exp.plot(recs, out / f"{file_stem(exp.name)}.png")
    _write_json(out / "results.json", results, strict=True)
    write_report(experiments, results, out, scale=scale)
    return results


def backend_options_for(backend: str, options: dict[str, Any] | None, out: Path) -> dict[str, Any] | None:
    """``options`` with the submitit backend's log folder defaulting to ``OUT/submitit``."""
    if backend != "submitit":
        return options
    options = dict(options or {})
    if options.get("folder") is None:
        options["folder"] = Path(out) / "submitit"
    return options


def _short(config: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items() if not isinstance(v, list | dict))[:60]


def _collect(experiments: Sequence[Experiment], plan: list, scale: str) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    for exp, cfg, path in plan:
        unit = json.loads(path.read_text())
        key = config_key(exp.name, cfg, exp.version)
        for rec in unit["records"]:
            records.append({"experiment": exp.name, "unit": key, "config": cfg, **rec})
    verdicts = [exp.verdict([r for r in records if r["experiment"] == exp.name]).to_json() for exp in experiments]
    return {"scale": scale, "records": records, "verdicts": verdicts}
