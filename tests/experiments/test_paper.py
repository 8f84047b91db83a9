"""The paper runner: tiny-scale runs, SIGKILL + resume, escaped HTML, verdict rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from permsym.experiments import experiments_by_name, run_experiments
from permsym.experiments.base import Experiment, Verdict, file_stem
from permsym.report import render_html


@pytest.mark.parametrize("experiment", experiments_by_name(), ids=lambda e: e.name)
def test_each_experiment_runs_at_tiny_scale(experiment: Experiment, tmp_path: Path) -> None:
    results = run_experiments([experiment], tmp_path, scale="tiny", show_progress=False)
    records = [r for r in results["records"] if r["experiment"] == experiment.name]
    assert records and all({"metric", "value", "config", "unit"} <= set(r) for r in records)
    (verdict,) = results["verdicts"]
    assert verdict["verdict"] in ("supported", "not supported", "inconclusive")
    assert verdict["criterion"] and verdict["evidence"]
    assert (tmp_path / f"{file_stem(experiment.name)}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "index.html").read_text()
    assert f'id="{experiment.name}"' in page and verdict["verdict"] in page


def test_same_config_gives_the_same_results_file(tmp_path: Path) -> None:
    exps = experiments_by_name(["c1_counts"])
    run_experiments(exps, tmp_path / "a", scale="tiny", show_progress=False)
    run_experiments(exps, tmp_path / "b", scale="tiny", show_progress=False, resume=False)
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()


class Slow(Experiment):
    """A deterministic experiment whose units take long enough to be killed mid-run."""

    name = "slow<script>alert(1)</script>"
    title = "title <b>bold</b> & more"
    claim = "claim with <script>x()</script>"
    criterion = "criterion <i>"

    def units(self, scale: str) -> list[dict[str, Any]]:
        return [{"i": i} for i in range(6)]

    def run_unit(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        time.sleep(float(os.environ.get("SLOW_UNIT_SECONDS", "0")))
        return [{"metric": "square", "value": config["i"] ** 2}]

    def verdict(self, records: list[dict[str, Any]]) -> Verdict:
        total = sum(r["value"] for r in records)
        return Verdict(self.name, self.claim, self.criterion, "supported" if total == 55 else "not supported", {"sum <x>": total})

    def plot(self, records: list[dict[str, Any]], path: Path) -> None:
        from permsym.report import new_figure, save_figure

        fig, (ax,) = new_figure()
        ax.plot([r["config"]["i"] for r in records], [r["value"] for r in records])
        ax.set(xlabel="i", ylabel="i^2")
        save_figure(fig, path)


def test_html_escapes_every_user_string(tmp_path: Path) -> None:
    results = run_experiments([Slow()], tmp_path, scale="tiny", show_progress=False)
    page = render_html([Slow()], results, scale="tiny")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>bold</b>" not in page and "<i>" not in page
    assert page.count('<tr class="supported">') == 1


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_paper import Slow
from permsym.experiments import run_experiments
run_experiments([Slow()], Path({out!r}), scale="tiny", show_progress=False)
"""


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out))
    env = {**os.environ, "SLOW_UNIT_SECONDS": "0.4"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    units = out / "units"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(units.glob("*.json"))) < 2:
        assert proc.poll() is None, "the child run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(units.glob("*.json")))
    assert 2 <= finished < 6, finished
    assert not (out / "results.json").exists()
    resumed = run_experiments([Slow()], out, scale="tiny", show_progress=False)
    clean = run_experiments([Slow()], tmp_path / "clean", scale="tiny", show_progress=False)
    assert resumed == clean
    assert (out / "results.json").read_bytes() == (tmp_path / "clean" / "results.json").read_bytes()
    assert json.loads((out / "results.json").read_text())["verdicts"][0]["verdict"] == "supported"


def test_cli_paper_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from permsym.cli import main

    assert main(["paper", "--scale", "tiny", "--only", "c1_counts", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdicts"][0]["experiment"] == "c1_counts"
    assert main(["paper", "--scale", "huge", "--out", str(tmp_path)]) == 2
    assert "scale must be one of tiny, quick, full; got 'huge'" in capsys.readouterr().err
    assert main(["paper", "--only", "c9", "--out", str(tmp_path)]) == 2
    assert "unknown experiment 'c9'" in capsys.readouterr().err
