"""The executor interface behind every backend, and the factory that picks one."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from permsym._errors import PermsymError

BACKENDS = ("local", "ray", "submitit")


class Executor(ABC):
    """Run units somewhere; give each result back once, in completion order.

    Units are ``fn(*args)`` with picklable ``fn`` and ``args`` (module-level functions and
    objects) and must be deterministic: a unit that is retried after a crash computes the
    same result again. Use as a context manager so that workers are released.

    Attributes:
        torch_threads: intra-op torch threads a unit should use (``None``: leave as is).
    """

    name: str = "executor"
    torch_threads: int | None = None

    @abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any) -> int:
        """Queue the unit ``fn(*args)``; return its ticket (0, 1, 2, ... in submission order)."""

    @abstractmethod
    def as_completed(self) -> Iterator[tuple[int, Any]]:
        """Yield ``(ticket, result)`` for every submitted unit, each exactly once, as they finish.

        A unit that raised re-raises its exception here (after earlier results were yielded).
        """

    def close(self) -> None:  # noqa: B027 - optional hook: nothing to release by default
        """Release workers; pending units are cancelled."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def make_executor(backend: str = "local", *, jobs: int = 1, address: str | None = None, num_gpus: float = 0,
                  call: str = "run", options: Mapping[str, Any] | None = None) -> Executor:
    """The executor for ``backend``: ``local`` (``jobs`` processes; 1 = in process), ``ray`` or ``submitit``.

    Args:
        backend: ``local``, ``ray`` or ``submitit``.
        jobs: local worker processes (``local`` only; Ray and Slurm schedule the units).
        address: Ray cluster address (``ray`` only; ``None`` starts or finds a local Ray).
        num_gpus: GPUs one unit reserves (``ray`` and ``submitit``; local units share this
            machine's GPU).
        call: the caller's name for error messages (e.g. ``paper``).
        options: keyword arguments of
            :class:`~permsym.backends.submitit_backend.SubmititExecutor` (``submitit`` only:
            ``folder``, ``cluster``, ``partition``, ``timeout_min``, ``cpus_per_task``,
            ``gpus_per_node``, ``max_retries``, ``poll_s``); an explicit ``gpus_per_node``
            wins over ``num_gpus``.

    Examples:
        >>> with make_executor("local") as ex:
        ...     t = ex.submit(pow, 2, 10)
        ...     list(ex.as_completed())
        [(0, 1024)]
    """
    if backend not in BACKENDS:
        raise ValueError(f"{call}: backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"{call}: jobs must be a positive integer; got {jobs!r}.")
    options = dict(options or {})
    if address is not None and backend != "ray":
        raise ValueError(f"{call}: address is for the ray backend; got address={address!r} with backend {backend!r}.")
    if options and backend != "submitit":
        names = ", ".join(sorted(options))
        raise ValueError(f"{call}: {names} {'is' if len(options) == 1 else 'are'} for the submitit backend; "
                         f"got {'it' if len(options) == 1 else 'them'} with backend {backend!r}.")
    if backend == "local":
        from permsym.backends.local import ProcessExecutor, SerialExecutor

        return SerialExecutor() if jobs == 1 else ProcessExecutor(jobs)
    if jobs != 1:
        where = "Ray schedules one unit per CPU of the cluster" if backend == "ray" else "each unit is one submitit job"
        raise ValueError(f"{call}: jobs is for the local backend ({where}); got jobs={jobs} with backend {backend!r}.")
    if backend == "ray":
        from permsym.backends.ray_backend import RayExecutor

        return RayExecutor(address=address, num_gpus=num_gpus, call=call)
    from permsym.backends.submitit_backend import SubmititExecutor, gpus_for

    allowed = ("folder", "cluster", "partition", "timeout_min", "cpus_per_task", "gpus_per_node", "max_retries", "poll_s")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{call}: unknown submitit option {unknown[0]!r}; expected one of {', '.join(allowed)}.")
    options.setdefault("gpus_per_node", gpus_for(num_gpus))
    return SubmititExecutor(**options, call=call)


def import_extra(name: str, call: str) -> Any:
    """Import the optional package behind backend ``name``, or raise one line saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise PermsymError(f"{call}: backend {name!r} needs the {name} extra, which is not installed; "
                           f"run pip install 'permsym[{name}]'.") from None
