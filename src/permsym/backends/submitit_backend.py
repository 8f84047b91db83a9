"""One submitit job per unit (Slurm, or local subprocesses); the driver alone writes results.

``submitit`` is imported inside these functions only (``pip install 'permsym[submitit]'``).
A job that ends without a result (its process or node died, it ran out of memory or time, it
was cancelled or preempted past submitit's own requeueing) is submitted again, at most
``max_retries`` times; the driver yields each ticket once, so a retried unit is neither lost
nor duplicated. An exception raised by the unit itself comes back as itself and is not
retried (it would raise again). Units must be deterministic, as for every backend.
"""

from __future__ import annotations

import math
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from permsym._errors import PermsymError
from permsym.backends.base import Executor, import_extra

__all__ = ["CLUSTERS", "SubmititExecutor", "import_submitit"]

CLUSTERS = ("auto", "local", "slurm")


def import_submitit(call: str = "permsym") -> Any:
    """Import submitit, or raise one line that says how to install it."""
    return import_extra("submitit", call)


class _Raised:
    """What a job returns when its unit raised: the exception, re-raised by the driver."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Run the unit in the job; its own exception is returned (not raised) so the driver
    can tell it from a job that died, and re-raise it as itself."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - handed back to the driver, which re-raises it
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle comes back as text
            exc = PermsymError(f"{type(exc).__name__}: {exc}")
        return _Raised(exc)


def _first_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


class SubmititExecutor(Executor):
    """Submit units as submitit jobs (``submitit.AutoExecutor``) and gather their results.

    Args:
        folder: where submitit keeps each job's pickles and logs (``FOLDER/<job id>/``). On
            Slurm it must be on a filesystem the compute nodes share. ``None``: a new
            temporary directory, removed by :meth:`close` (fine for ``cluster="local"``).
            :func:`permsym.experiments.run_experiments` and
            :func:`permsym.ensemble.run_sweep` default it to ``OUT/submitit``.
        cluster: ``slurm``, ``local`` (each job a subprocess of this machine, all at once)
            or ``auto`` (``AutoExecutor``'s choice: Slurm when ``srun`` is on ``PATH``,
            else local).
        partition: Slurm partition (``None``: the cluster's default).
        timeout_min: time limit of one job, in minutes (``--time`` on Slurm).
        cpus_per_task: CPUs of one job; units use that many torch threads.
        gpus_per_node: GPUs of one job.
        max_retries: resubmissions of a unit whose job ended without a result.
        poll_s: seconds between two looks at the jobs while none has finished.
        call: the caller's name for error messages.
    """

    name = "submitit"

    def __init__(self, *, folder: str | Path | None = None, cluster: str = "auto", partition: str | None = None,
                 timeout_min: int = 60, cpus_per_task: int = 1, gpus_per_node: int = 0, max_retries: int = 3,
                 poll_s: float = 1.0, call: str = "permsym") -> None:
        self.call = call
        if cluster not in CLUSTERS:
            raise ValueError(f"{call}: submitit cluster must be one of {', '.join(CLUSTERS)}; got {cluster!r}.")
        for what, value, low in (("timeout_min", timeout_min, 1), ("cpus_per_task", cpus_per_task, 1),
                                 ("gpus_per_node", gpus_per_node, 0), ("max_retries", max_retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a positive integer" if low else "a non-negative integer"
                raise ValueError(f"{call}: {what} must be {kind}; got {value!r}.")
        self.submitit = import_submitit(call)
        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="permsym-submitit-")) if folder is None else Path(folder)
        self.cluster = cluster
        self.max_retries = max_retries
        self.poll_s = poll_s
        self.torch_threads = cpus_per_task
        self._parameters: dict[str, Any] = {"name": f"permsym-{call}", "timeout_min": timeout_min,
                                            "cpus_per_task": cpus_per_task, "gpus_per_node": gpus_per_node,
                                            "nodes": 1, "tasks_per_node": 1}
        if partition is not None:
            self._parameters["slurm_partition"] = partition
        self._executor: Any = None
        self._count = 0
        self._units: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._running: dict[int, Any] = {}  # ticket -> job
        self._retries: dict[int, int] = {}

    def _start(self) -> None:
        try:
            executor = self.submitit.AutoExecutor(folder=self.folder / "%j",
                                                  cluster=None if self.cluster == "auto" else self.cluster)
            executor.update_parameters(**self._parameters)
        except (RuntimeError, ValueError, NameError, AssertionError) as exc:
            raise PermsymError(f"{self.call}: cannot start submitit's {self.cluster} executor: "
                               f"{_first_line(exc)}") from None
        self._executor = executor

    def _launch(self, ticket: int) -> None:
        if self._executor is None:
            self._start()
        fn, args = self._units[ticket]
        errors = self.submitit.core.utils
        try:
            self._running[ticket] = self._executor.submit(_call, fn, args)
        except (errors.FailedSubmissionError, errors.FailedJobError, OSError) as exc:  # e.g. sbatch refused it
            raise PermsymError(f"{self.call}: submitting unit {ticket} to {self._executor.cluster} failed: "
                               f"{_first_line(exc)}") from None

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> int:
        ticket = self._count
        self._count += 1
        self._units[ticket] = (fn, args)
        self._retries[ticket] = 0
        self._launch(ticket)
        return ticket

    def as_completed(self) -> Iterator[tuple[int, Any]]:
        errors = self.submitit.core.utils
        while self._running:
            finished = [t for t, job in self._running.items() if job.done()]
            if not finished:
                time.sleep(self.poll_s)
                continue
            for ticket in finished:
                job = self._running.pop(ticket)
                try:
                    result = job.result()
                except errors.FailedJobError as exc:  # the job ran but failed outside the unit
                    raise PermsymError(f"{self.call}: unit {ticket} failed in submitit job {job.job_id} "
                                       f"(logs: {job.paths.stderr}): {_last_line(exc)}") from None
                except errors.UncompletedJobError as exc:  # no result: died, killed, timed out
                    state = _state(job)
                    if state in _NO_RETRY:  # the same limits would fail the same way again
                        raise PermsymError(f"{self.call}: unit {ticket} ended with Slurm state {state} "
                                           f"(submitit job {job.job_id}, logs: {job.paths.stderr}); "
                                           f"{_NO_RETRY[state]}") from None
                    if self._retries[ticket] >= self.max_retries:
                        raise PermsymError(f"{self.call}: unit {ticket} failed after {self.max_retries} "
                                           f"retries (submitit job {job.job_id}, logs: {job.paths.stderr}): "
                                           f"{_first_line(exc)}") from None
                    self._retries[ticket] += 1
                    self._launch(ticket)
                    continue
                del self._units[ticket]
                if isinstance(result, _Raised):
                    raise result.exc from None
                yield ticket, result

    def close(self) -> None:
        for job in self._running.values():
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - already finished, or the scheduler is gone
                pass
        self._running.clear()
        self._units.clear()
        self._executor = None
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def _last_line(exc: BaseException) -> str:
    """The error line of a remote traceback (the line before submitit's own trailer)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    tail = [line for line in lines if not line.startswith(("You can check", "or at paths", "- /"))]
    return _first_line(tail[-1] if tail else str(exc))


def gpus_for(num_gpus: float) -> int:
    """Whole GPUs for one job reserving ``num_gpus`` (Slurm reserves whole GPUs)."""
    return math.ceil(num_gpus) if num_gpus > 0 else 0


_NO_RETRY = {
    "TIMEOUT": "raise --slurm-time (minutes) instead of retrying with the same limit.",
    "OUT_OF_MEMORY": "ask Slurm for more memory per unit instead of retrying with the same limit.",
}


def _state(job: Any) -> str:
    """The scheduler's state of a finished job (``""`` where it cannot be read)."""
    try:
        return str(job.state).split()[0].upper()
    except Exception:  # noqa: BLE001 - sacct missing or the local executor's own states
        return ""
