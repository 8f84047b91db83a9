"""``permsym sweep CONFIG``: a grid of architectures x learning rates x seeds on any backend."""

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
    print_json,
    stdout,
    submitit_options,
)


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="sweep config (.json or .toml): archs, data, lrs, seeds, ...")],
    out: Annotated[Path, typer.Option(help="output folder (units/ cache and sweep.json)")] = Path("reports/sweep"),
    backend: Annotated[str, BACKEND] = "local",
    address: Annotated[str | None, ADDRESS] = None,
    submitit_folder: Annotated[Path | None, SUBMITIT_FOLDER] = None,
    submitit_cluster: Annotated[str | None, SUBMITIT_CLUSTER] = None,
    slurm_partition: Annotated[str | None, SLURM_PARTITION] = None,
    slurm_time: Annotated[int | None, SLURM_TIME] = None,
    slurm_cpus_per_task: Annotated[int | None, SLURM_CPUS] = None,
    jobs: Annotated[int, typer.Option(help="parallel worker processes (local backend)")] = 1,
    device: Annotated[str, DEVICE] = "cpu",
    resume: Annotated[bool, typer.Option("--resume/--fresh", help="reuse finished units")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="print sweep.json")] = False,
) -> None:
    """Train every (architecture, learning rate, seed) of CONFIG; one record each in OUT/sweep.json."""
    from permsym.ensemble.sweep import load_sweep_config, run_sweep

    cfg = load_sweep_config(config)  # validate before starting any worker
    results = run_sweep(cfg, out, backend=backend, jobs=jobs, address=address, device=device, resume=resume,
                        show_progress=not json_out,
                        backend_options=submitit_options(submitit_folder, submitit_cluster, slurm_partition,
                                                         slurm_time, slurm_cpus_per_task))
    if json_out:
        print_json(results)
        return
    for r in results["records"]:
        stdout.print(f"{r['arch']:<28} lr {r['lr']:<8g} seed {r['seed']:<4} final loss {r['value']:.6g}")
    stdout.print(f"{len(results['records'])} runs on {results['device']} -> {out / 'sweep.json'}")
