"""Run experiments unit by unit with a cache keyed by config hash; write results and report.

Every unit's records are written atomically to ``OUT/units/<experiment>-<hash>.json`` as
soon as it finishes, so a run killed at any moment (even SIGKILL) resumes where it stopped
and ends with the same ``results.json`` as an uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from permsym._errors import PermsymError
from permsym.experiments.base import SCALES, Experiment, config_key, file_stem
from permsym.io import atomic_write


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _run_unit(experiment: Experiment, config: dict[str, Any], torch_threads: int | None) -> list[dict[str, Any]]:
    from permsym._threads import limited_threads

    with limited_threads(torch_threads=torch_threads, blas_threads=1):
        return experiment.run_unit(config)


def run_experiments(
    experiments: Sequence[Experiment],
    out: Path,
    *,
    scale: str = "quick",
    resume: bool = True,
    jobs: int = 1,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run (or reuse) every unit, then write ``results.json``, one PNG per experiment and ``index.html``."""
    from permsym.report import write_report

    if scale not in SCALES:
        raise PermsymError(f"paper: scale must be one of {', '.join(SCALES)}; got {scale!r}.")
    if jobs < 1:
        raise ValueError(f"paper: jobs must be a positive integer; got {jobs}.")
    out = Path(out)
    units_dir = out / "units"
    units_dir.mkdir(parents=True, exist_ok=True)
    plan = [(exp, cfg, units_dir / f"{file_stem(exp.name)}-{config_key(exp.name, cfg, exp.version)}.json") for exp in experiments for cfg in exp.units(scale)]
    todo = [(exp, cfg, path) for exp, cfg, path in plan if not (resume and path.is_file())]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task("paper", total=len(plan), completed=len(plan) - len(todo))
        if jobs == 1:
            for exp, cfg, path in todo:
                progress.update(task, description=f"{exp.name} {_short(cfg)}")
                _write_json(path, {"experiment": exp.name, "config": cfg, "records": _run_unit(exp, cfg, None)})
                progress.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_run_unit, exp, cfg, 1): (exp, cfg, path) for exp, cfg, path in todo}
                for future in _as_completed(futures):
                    exp, cfg, path = futures[future]
                    _write_json(path, {"experiment": exp.name, "config": cfg, "records": future.result()})
                    progress.update(task, description=f"{exp.name} {_short(cfg)}")
                    progress.advance(task)
    results = _collect(experiments, plan, scale)
    for exp in experiments:
        recs = [r for r in results["records"] if r["experiment"] == exp.name]
        exp.plot(recs, out / f"{file_stem(exp.name)}.png")
    _write_json(out / "results.json", results)
    write_report(experiments, results, out, scale=scale)
    return results


def _as_completed(futures: dict) -> Any:  # type: ignore[type-arg]
    from concurrent.futures import as_completed

    return as_completed(futures)


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
