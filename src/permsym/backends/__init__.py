"""Where experiment units run: one small executor interface, several backends.

An :class:`~permsym.backends.base.Executor` takes units (``submit(fn, *args)`` returns a
ticket) and hands back each ticket's result exactly once as units finish
(``as_completed()``). The caller (the driver) writes results; executors never touch files.

Backends:
    ``local`` with ``jobs=1``: :class:`SerialExecutor` (in process, in submission order);
    ``local`` with ``jobs>1``: :class:`ProcessExecutor` (a bounded process pool);
    ``ray``: :class:`~permsym.backends.ray_backend.RayExecutor` (one Ray task per unit,
    retried when its worker or node dies); ray is imported only when this backend is used;
    ``submitit``: :class:`~permsym.backends.submitit_backend.SubmititExecutor` (one Slurm job,
    or local subprocess, per unit; resubmitted when the job dies); submitit is imported only
    when this backend is used.
"""

from __future__ import annotations

from permsym.backends.base import BACKENDS, Executor, make_executor
from permsym.backends.device import DEVICES, resolve_device
from permsym.backends.local import ProcessExecutor, SerialExecutor

__all__ = [
    "BACKENDS",
    "DEVICES",
    "Executor",
    "ProcessExecutor",
    "SerialExecutor",
    "make_executor",
    "resolve_device",
]
