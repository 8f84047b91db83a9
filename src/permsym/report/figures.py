"""Figures without pyplot's global state: a Figure object, saved atomically as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from permsym.io import atomic_write


def new_figure(ncols: int = 1, *, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    """A matplotlib Figure (Agg canvas) with ``ncols`` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` via a temporary file (no timestamps: reproducible bytes)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}))
