"""The HTML report: verdict table on top, then one section per experiment (all text escaped)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from permsym.experiments.base import file_stem
from permsym.io import atomic_write
from permsym.report.figures import new_figure, save_figure

__all__ = ["new_figure", "render_html", "save_figure", "write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.supported{background:#e3f6e3}.not-supported{background:#fbe3e3}.inconclusive{background:#f6f1dc}
img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)[:200]
    return str(value)


def render_html(experiments: Sequence[Any], results: dict[str, Any], *, scale: str) -> str:
    """The whole page as a string; every user-visible string goes through ``html.escape``."""
    verdicts = {v["experiment"]: v for v in results["verdicts"]}
    rows = []
    for exp in experiments:
        v = verdicts[exp.name]
        cls = v["verdict"].replace(" ", "-")
        rows.append(
            f'<tr class="{_e(cls)}"><td><a href="#{_e(exp.name)}">{_e(exp.name)}</a></td>'
            f"<td>{_e(v['claim'])}</td><td>{_e(v['criterion'])}</td><td><b>{_e(v['verdict'])}</b></td></tr>"
        )
    sections = []
    for exp in experiments:
        v = verdicts[exp.name]
        evidence = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt(val))}</td></tr>" for k, val in v["evidence"].items())
        sections.append(
            f'<section id="{_e(exp.name)}"><h2>{_e(exp.name)}: {_e(exp.title)}</h2>'
            f"<p><b>The paper claims:</b> {_e(exp.claim)}</p>"
            f"<p><b>What was run:</b> {_e(exp.describe(scale))}</p>"
            f"<p><b>Criterion (fixed before running):</b> {_e(v['criterion'])}</p>"
            f'<p><b>Verdict:</b> <span class="{_e(v["verdict"].replace(" ", "-"))}">{_e(v["verdict"])}</span></p>'
            f'<img src="{_e(file_stem(exp.name))}.png" alt="{_e(exp.title)}">'
            f"<table><tr><th>evidence</th><th>value</th></tr>{evidence}</table></section>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>permsym: the paper's claims, measured</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Permutative redundancy and uncertainty of the objective — measured</h1>"
        f"<p>arXiv 2411.07008, reproduced by permsym at scale <code>{_e(scale)}</code>. "
        "Every verdict is computed from the numbers below against a criterion stated before the run.</p>"
        "<table><tr><th>experiment</th><th>claim</th><th>criterion</th><th>verdict</th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(sections)
        + "</body></html>\n"
    )


def write_report(experiments: Sequence[Any], results: dict[str, Any], out: Path, *, scale: str) -> Path:
    """Write ``out/index.html`` atomically (figures are written by the experiments)."""
    page = render_html(experiments, results, scale=scale)
    return atomic_write(Path(out) / "index.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
