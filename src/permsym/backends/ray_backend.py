"""One Ray task per unit; results come back to the driver, which alone writes them.

``ray`` is imported inside these functions only (``pip install 'permsym[ray]'``). A task whose
worker process or node dies is retried by Ray (``max_retries``); the driver yields each
ticket once, so a retried unit is neither lost nor duplicated. Units must be deterministic
(they are: seeds are part of every config), so a retry computes the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from permsym._errors import PermsymError
from permsym.backends.base import Executor, import_extra

__all__ = ["RayExecutor", "import_ray"]



def import_ray(call: str = "permsym") -> Any:
    """Import ray, or raise one line that says how to install it."""
    return import_extra("ray", call)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(*args)


class RayExecutor(Executor):
    """Submit units as Ray tasks to the cluster at ``address``.

    Args:
        address: a Ray address (``host:port`` or ``ray://host:port``); ``None`` uses
            ``ray.init()``'s default (``RAY_ADDRESS`` or a new local Ray). An already
            initialised Ray in this process is used as it is, and left running.
        max_retries: retries of a unit whose worker or node died (exceptions raised by the
            unit itself are not retried: they would raise again).
        num_cpus, num_gpus: resources one unit reserves.
        call: the caller's name for error messages.
    """

    name = "ray"
    torch_threads = 1

    def __init__(self, *, address: str | None = None, max_retries: int = 3, num_cpus: float = 1,
                 num_gpus: float = 0, call: str = "permsym") -> None:
        self.call = call
        self.ray = import_ray(call)
        self.address = address
        self.max_retries = max_retries
        self._owns_ray = False
        self._pending: dict[Any, int] = {}
        self._count = 0
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": max_retries,
                         "retry_exceptions": False}
        self._remote: Any = None

    def _start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.address)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "the default address"
                raise PermsymError(f"{self.call}: cannot connect to the Ray cluster at {where}: "
                                   f"{' '.join(str(exc).split())}") from None
            self._owns_ray = True
        self._remote = ray.remote(_call).options(**self._options)

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> int:
        if self._remote is None:
            self._start()
        ticket = self._count
        self._count += 1
        self._pending[self._remote.remote(fn, args)] = ticket
        return ticket

    def as_completed(self) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        while self._pending:
            (ready,), _ = ray.wait(list(self._pending), num_returns=1)
            ticket = self._pending.pop(ready)
            try:
                result = ray.get(ready)
            except ray.exceptions.RayTaskError as exc:  # the unit itself raised: re-raise its error
                cause = getattr(exc, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
            except ray.exceptions.RayError as exc:  # worker/node lost more often than max_retries
                first = " ".join(str(exc).split())[:300]
                raise PermsymError(f"{self.call}: unit {ticket} failed on the Ray cluster after "
                                   f"{self.max_retries} retries: {first}") from None
            yield ticket, result

    def close(self) -> None:
        ray = self.ray
        for ref in list(self._pending):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or its node is gone
                pass
        self._pending.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        self._remote = None
