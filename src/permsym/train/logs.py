"""Sinks for :class:`~permsym.train.monitor.NoiseMonitor`: a JSON-lines file and TensorBoard.

:class:`JsonlLog` appends one JSON object per measurement. Each line is encoded in full and
written with a single ``os.write`` on a file opened with ``O_APPEND``, so a crash (an
exception, SIGKILL) between or during measurements never leaves a half-written line; with
``fsync=True`` each line also reaches the disk before training continues.

:class:`TensorBoardLog` needs the optional ``tensorboard`` package, imported only when a
writer is created.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from permsym._errors import PermsymError
from permsym.train.monitor import NoiseMeasurement

__all__ = ["TENSORBOARD_SCALARS", "JsonlLog", "TensorBoardLog"]

TENSORBOARD_SCALARS = ("trace_C", "grad_norm_sq", "noise_scale", "temperature", "lr", "target_temperature", "lambda_max")


class JsonlLog:
    """Append measurements to ``path``, one JSON object per line, flushed per line.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "noise.jsonl"
        >>> with JsonlLog(path) as log:
        ...     log.write({"step": 0, "temperature": 1e-4})
        >>> path.read_text()
        '{"step": 0, "temperature": 0.0001}\\n'
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PermsymError(f"JsonlLog: cannot open the log file {str(self.path)!r}: {exc.strerror}.") from None
        if self.path.stat().st_size > 0 and not _ends_with_newline(self.path):
            self._write_bytes(b"\n")  # a foreign partial line stays on its own line

    def _write_bytes(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)

    def write(self, obj: dict[str, Any]) -> None:
        """Append one object as a line (``allow_nan=False``: inf/nan must arrive as strings)."""
        if self._fd is None:
            raise PermsymError(f"JsonlLog: the log {str(self.path)!r} is closed.")
        line = json.dumps(obj, allow_nan=False) + "\n"
        self._write_bytes(line.encode())

    def __call__(self, measurement: NoiseMeasurement) -> None:
        self.write(measurement.to_json())

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class TensorBoardLog:
    """Write the scalars :data:`TENSORBOARD_SCALARS` under ``noise/`` to a TensorBoard ``logdir``.

    Raises:
        PermsymError: if the ``tensorboard`` package is not installed (one line saying how).
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PermsymError(
                "TensorBoard logging needs the tensorboard package, which is not installed; "
                "install it with: pip install 'tensorboard>=2.15,<3'"
            ) from None
        self.logdir = str(logdir)
        self._writer: Any = SummaryWriter(log_dir=self.logdir)

    def __call__(self, measurement: NoiseMeasurement) -> None:
        for key in TENSORBOARD_SCALARS:
            value = getattr(measurement, key)
            if value is not None:
                self._writer.add_scalar(f"noise/{key}", float(value), measurement.step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the writer."""
        self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
