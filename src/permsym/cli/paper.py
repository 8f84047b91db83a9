"""``permsym paper``: run the paper's claims on embedded data into results.json + index.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from permsym.cli.app import (
    ADDRESS,
    BACKEND,
    DEVICE,
    SLURM_CPUS,
    SLURM_PARTITION,
    SLURM_TIME,
    SUBMITIT_CLUSTER,
    SUBMITIT_FOLDER,
    app,
    stdout,
)


@app.command()
def paper(
    scale: Annotated[str, typer.Option(help="tiny (tests), quick (< 10 min on 2 cores) or full")] = "quick",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("reports/paper"),
    only: Annotated[str, typer.Option(help="comma-separated experiment names")] = "",
    jobs: Annotated[int, typer.Option(help="parallel worker processes (local backend)")] = 1,
    backend: Annotated[str, BACKEND] = "local",
    address: Annotated[str | None, ADDRESS] = None,
    submitit_folder: Annotated[Path | None, SUBMITIT_FOLDER] = None,
    submitit_cluster: Annotated[str | None, SUBMITIT_CLUSTER] = None,
    slurm_partition: Annotated[str | None, SLURM_PARTITION] = None,
    slurm_time: Annotated[int | None, SLURM_TIME] = None,
    slurm_cpus_per_task: Annotated[int | None, SLURM_CPUS] = None,
    device: Annotated[str, DEVICE] = "cpu",
    resume: Annotated[bool, typer.Option("--resume/--fresh", help="reuse finished units")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="print the verdicts as JSON")] = False,
) -> None:
    """Reproduce the paper's claims: every experiment, a verdict each, an HTML report."""
    from permsym.cli.app import print_json, submitit_options
    from permsym.experiments import experiments_by_name, run_experiments

    names = [n.strip() for n in only.split(",") if n.strip()] or None
    experiments = experiments_by_name(names)
    results = run_experiments(experiments, out, scale=scale, resume=resume, jobs=jobs, show_progress=not json_out,
                              backend=backend, address=address, device=device,
                              backend_options=submitit_options(submitit_folder, submitit_cluster, slurm_partition,
                                                               slurm_time, slurm_cpus_per_task))
    if json_out:
        print_json({"out": str(out), "verdicts": results["verdicts"]})
        return
    for v in results["verdicts"]:
        stdout.print(f"{v['experiment']:<16} {v['verdict']:<14} {v['claim']}")
    stdout.print(f"report: {out / 'index.html'}")
