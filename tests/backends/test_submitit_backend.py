"""The submitit backend on submitit's local cluster (each job a subprocess of this machine).

A job that dies (its process is SIGKILLed, as the OOM killer or a lost node would) is
resubmitted, a bounded number of times; the unit's own exception comes back as itself and is
not retried; results equal the serial backend's. Functions defined here run inside the jobs,
so this module is pickled by value (the jobs cannot import a test module).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from permsym._errors import PermsymError
from permsym.backends import make_executor
from permsym.experiments.base import Experiment, Verdict

GRID = {"archs": ["mlp:4-8-1"], "data": "linear:n=64,d=4", "lrs": [0.05, 0.1], "seeds": 2, "epochs": 2,
        "batch_size": 16}  # 4 units: 2 lrs x 2 seeds, one seed each
LOCAL = {"cluster": "local", "poll_s": 0.1}


@pytest.fixture
def jobs_see_this_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pickle this module's functions by value, and let a dead job's missing result be
    noticed after 1 s instead of submitit's 15 s (its grace time for slow shared filesystems)."""
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    monkeypatch.setattr(submitit.Job, "_results_timeout_s", 1)
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def _mark(markers: Path, name: str) -> None:
    (markers / f"{name}__{os.getpid()}__{time.monotonic_ns()}").touch()


def _starts(markers: Path, name: str) -> int:
    return sum(1 for m in markers.iterdir() if m.name.split("__")[0] == name)


def _flaky_unit(markers: Path, killed: str, unit: dict, device: str) -> list:
    """The sweep's unit; the unit named ``killed`` dies (SIGKILL) on its first attempt."""
    from permsym.ensemble.sweep import sweep_unit

    name = f"{unit['lr']}-{unit['seeds'][0]}"
    first = _starts(markers, name) == 0
    _mark(markers, name)
    if name == killed and first:
        os.kill(os.getpid(), signal.SIGKILL)
    records = sweep_unit(unit, device)
    _mark(markers, f"done-{name}")
    return records


def _always_killed(markers: Path, x: int) -> int:
    _mark(markers, "start")
    os.kill(os.getpid(), signal.SIGKILL)
    return x  # pragma: no cover - never reached


def _raises(markers: Path, x: int) -> int:
    _mark(markers, "start")
    raise ValueError(f"unit: x must be even; got {x}.")


class Squares(Experiment):
    """Three tiny units for the paper runner."""

    name = "squares"
    title = claim = criterion = "squares"

    def units(self, scale: str) -> list[dict[str, Any]]:
        return [{"i": i} for i in range(3)]

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"metric": "square", "value": config["i"] ** 2}]

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        return Verdict(self.name, self.claim, self.criterion, "supported", {"sum": sum(r["value"] for r in records)})

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        path.write_bytes(b"")


@pytest.mark.slow
def test_cli_sweep_on_submitit_retries_a_killed_job_and_equals_serial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs_see_this_module: None) -> None:
    import permsym.ensemble.sweep as sweep_module
    from permsym.cli import main
    from permsym.ensemble.sweep import load_sweep_config, run_sweep, sweep_units

    markers = tmp_path / "markers"
    markers.mkdir()
    killed = "0.1-1"
    monkeypatch.setattr(sweep_module, "_call_unit", functools.partial(_flaky_unit, markers, killed))
    config = tmp_path / "grid.json"
    config.write_text(json.dumps({**GRID, "seeds_per_unit": 1}))
    out = tmp_path / "submitit"
    assert main(["sweep", str(config), "--out", str(out), "--backend", "submitit", "--submitit-cluster", "local",
                 "--json"]) == 0

    # the killed unit ran twice and finished once; every other unit ran and finished once
    names = [f"{lr}-{seed}" for lr in GRID["lrs"] for seed in range(GRID["seeds"])]
    assert {n: (_starts(markers, n), _starts(markers, f"done-{n}")) for n in names} == {
        n: ((2, 1) if n == killed else (1, 1)) for n in names}
    assert len({m.name.split("__")[1] for m in markers.iterdir() if m.name.startswith(killed)}) == 2  # two processes
    assert (out / "submitit").is_dir()  # the job logs default to OUT/submitit

    # one file per unit, and the same sweep.json as the serial backend
    cfg = load_sweep_config(config)
    assert sorted(p.name for p in (out / "units").iterdir()) == sorted(p.name for p, *_ in sweep_units(cfg, out))
    monkeypatch.undo()
    run_sweep(cfg, tmp_path / "serial")
    assert (out / "sweep.json").read_bytes() == (tmp_path / "serial" / "sweep.json").read_bytes()


@pytest.mark.slow
def test_paper_runner_on_submitit_equals_serial(tmp_path: Path, jobs_see_this_module: None) -> None:
    from permsym.experiments import run_experiments

    folder = tmp_path / "logs"
    run_experiments([Squares()], tmp_path / "a", scale="tiny", show_progress=False, backend="submitit",
                    backend_options={**LOCAL, "folder": folder})
    run_experiments([Squares()], tmp_path / "b", scale="tiny", show_progress=False)
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()
    assert len(list((tmp_path / "a" / "units").iterdir())) == 3
    assert len([p for p in folder.iterdir() if p.is_dir()]) >= 3  # one log folder per job


@pytest.mark.slow
def test_unit_errors_come_back_as_themselves_and_dead_jobs_are_retried_a_bounded_number_of_times(
        tmp_path: Path, jobs_see_this_module: None) -> None:
    raised, died = tmp_path / "raised", tmp_path / "died"
    raised.mkdir()
    died.mkdir()
    with make_executor("submitit", options={**LOCAL, "folder": tmp_path / "logs"}, call="sweep") as ex:
        ex.submit(_raises, raised, 3)
        with pytest.raises(ValueError, match=r"^unit: x must be even; got 3\.$"):
            list(ex.as_completed())
    assert _starts(raised, "start") == 1  # not retried: it would raise again
    with make_executor("submitit", options={**LOCAL, "max_retries": 1}, call="sweep") as ex:
        folder = ex.folder
        ex.submit(_always_killed, died, 3)
        with pytest.raises(PermsymError, match=r"^sweep: unit 0 failed after 1 retries \(submitit job \d+, logs: ") as info:
            list(ex.as_completed())
    assert "\n" not in str(info.value)
    assert _starts(died, "start") == 2  # the first attempt and one retry
    assert not folder.exists()  # a temporary log folder is removed on close


def test_submitit_backend_without_submitit_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from permsym.cli import main

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(PermsymError, match=r"^sweep: backend 'submitit' needs the submitit extra, which is not "
                                           r"installed; run pip install 'permsym\[submitit\]'\.$"):
        make_executor("submitit", call="sweep")
    config = tmp_path / "grid.json"
    config.write_text(json.dumps(GRID))
    assert main(["sweep", str(config), "--backend", "submitit", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("permsym sweep: backend 'submitit' needs the submitit extra, which is not "
                                       "installed; run pip install 'permsym[submitit]'.\n")
    assert main(["paper", "--backend", "submitit", "--slurm-partition", "gpu", "--scale", "tiny", "--only",
                 "c1_counts", "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err == ("permsym paper: backend 'submitit' needs the submitit extra, which is not "
                                       "installed; run pip install 'permsym[submitit]'.\n")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"backend": "submitit", "jobs": 2}, r"^run: jobs is for the local backend \(each unit is one submitit job\); "
                                         r"got jobs=2 with backend 'submitit'\.$"),
    ({"backend": "submitit", "address": "h:6379"}, r"^run: address is for the ray backend; got address='h:6379' "
                                                   r"with backend 'submitit'\.$"),
    ({"options": {"partition": "gpu"}}, r"^run: partition is for the submitit backend; got it with backend 'local'\.$"),
    ({"backend": "submitit", "options": {"account": "x"}}, r"^run: unknown submitit option 'account'; expected one of "),
    ({"backend": "submitit", "options": {"cluster": "pbs"}}, r"^run: submitit cluster must be one of auto, local, "
                                                             r"slurm; got 'pbs'\.$"),
    ({"backend": "submitit", "options": {"timeout_min": 0}}, r"^run: timeout_min must be a positive integer; got 0\.$"),
])
def test_bad_submitit_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_executor(**kwargs)


def test_cli_submitit_options_are_rejected_with_another_backend(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from permsym.cli import main

    config = tmp_path / "grid.json"
    config.write_text(json.dumps(GRID))
    assert main(["sweep", str(config), "--slurm-partition", "gpu", "--slurm-time", "30", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("permsym sweep: partition, timeout_min are for the submitit backend; "
                                       "got them with backend 'local'.\n")


def test_slurm_without_slurm_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    import shutil

    if shutil.which("srun") is not None:
        pytest.skip("checks the error on a machine without Slurm; srun is on PATH")
    with make_executor("submitit", options={"cluster": "slurm", "folder": tmp_path}, call="sweep") as ex:
        with pytest.raises(PermsymError, match=r"^sweep: cannot start submitit's slurm executor: .*srun") as info:
            ex.submit(pow, 2, 3)
    assert "\n" not in str(info.value)


def test_a_timed_out_job_is_not_retried_with_the_same_limit(tmp_path: Path) -> None:
    """Slurm's TIMEOUT / OUT_OF_MEMORY would recur with the same limits: one line with the hint."""
    import submitit

    class TimedOut:
        job_id, state = "42", "TIMEOUT"
        paths = type("Paths", (), {"stderr": tmp_path / "42.err"})()

        def done(self) -> bool:
            return True

        def result(self) -> None:
            raise submitit.core.utils.UncompletedJobError("job 42 has not produced any output")

    with make_executor("submitit", options={**LOCAL, "folder": tmp_path}, call="sweep") as ex:
        ex._units[0], ex._retries[0], ex._running[0] = (print, ()), 0, TimedOut()
        with pytest.raises(PermsymError, match=r"sweep: unit 0 ended with Slurm state TIMEOUT .*raise --slurm-time"):
            list(ex.as_completed())
