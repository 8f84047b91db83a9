"""The executor interface: local serial and process backends, errors, and ray kept optional."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from permsym._errors import PermsymError
from permsym.backends import ProcessExecutor, SerialExecutor, make_executor

GRID = {"archs": ["mlp:4-8-1"], "data": "linear:n=64,d=4", "lrs": [0.05, 0.1], "seeds": 2, "epochs": 2,
        "batch_size": 16}


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    raise ValueError(f"unit: x must be even; got {x}.")


def test_serial_gives_each_ticket_once_in_order() -> None:
    with make_executor("local") as ex:
        assert isinstance(ex, SerialExecutor)
        tickets = [ex.submit(_square, i) for i in range(4)]
        assert list(ex.as_completed()) == [(t, t * t) for t in tickets]


@pytest.mark.slow
def test_process_pool_gives_each_ticket_once_and_reraises() -> None:
    with make_executor("local", jobs=2) as ex:
        assert isinstance(ex, ProcessExecutor) and ex.torch_threads == 1
        for i in range(5):
            ex.submit(_square, i)
        assert sorted(ex.as_completed()) == [(i, i * i) for i in range(5)]
        ex.submit(_fail, 3)
        with pytest.raises(ValueError, match=r"unit: x must be even; got 3\."):
            list(ex.as_completed())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"backend": "spark"}, r"run: backend must be one of local, ray, submitit; got 'spark'\."),
    ({"jobs": 0}, r"run: jobs must be a positive integer; got 0\."),
    ({"address": "10.0.0.1:6379"}, r"run: address is for the ray backend; got address='10.0.0.1:6379' with backend 'local'\."),
    ({"backend": "ray", "jobs": 2}, r"run: jobs is for the local backend .* got jobs=2 with backend 'ray'\."),
])
def test_bad_executor_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_executor(**kwargs)


def test_ray_backend_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from permsym.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(PermsymError, match=r"sweep: backend 'ray' needs the ray extra, which is not installed; "
                                           r"run pip install 'permsym\[ray\]'\."):
        make_executor("ray", call="sweep")
    config = tmp_path / "grid.json"
    config.write_text(json.dumps(GRID))
    assert main(["sweep", str(config), "--backend", "ray", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("permsym sweep: backend 'ray' needs the ray extra, which is not installed; "
                                       "run pip install 'permsym[ray]'.\n")
    assert main(["paper", "--backend", "ray", "--scale", "tiny", "--only", "c1_counts", "--out", str(tmp_path / "p")]) == 2
    assert "permsym paper: backend 'ray' needs the ray extra" in capsys.readouterr().err


def test_importing_permsym_does_not_import_ray_or_submitit() -> None:
    code = ("import sys, permsym, permsym.cli, permsym.backends, permsym.ensemble.sweep, permsym.experiments; "
            "assert 'ray' not in sys.modules, 'ray imported at import time'; "
            "assert 'submitit' not in sys.modules, 'submitit imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_sweep_same_file_serial_and_process_pool_and_resumes(tmp_path: Path) -> None:
    from permsym.ensemble import run_sweep

    serial = run_sweep(GRID, tmp_path / "a")
    run_sweep(GRID, tmp_path / "b", jobs=2)
    assert (tmp_path / "a" / "sweep.json").read_bytes() == (tmp_path / "b" / "sweep.json").read_bytes()
    assert len(serial["records"]) == 4 and len(list((tmp_path / "a" / "units").iterdir())) == 4
    # a resumed sweep reuses every unit file and writes the same result
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "units").iterdir()}
    assert run_sweep(GRID, tmp_path / "a") == serial
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "units").iterdir()} == stamps


@pytest.mark.parametrize(("grid", "match"), [
    ({**GRID, "lr": 0.1}, r"sweep: config: unknown field 'lr'; expected one of archs, data, lrs, seeds, epochs, "),
    ({**GRID, "lrs": [0.1, -1]}, r"sweep: config: lrs\[1\] must be greater than 0; got -1\."),
    ({**GRID, "epochs": 0}, r"sweep: config: epochs must be greater than 0; got 0\."),
    ({**GRID, "archs": ["mpl:4-8-1"]}, r"sweep: config: archs: unknown architecture 'mpl'"),
    ({**GRID, "data": "lnear:n=4"}, r"sweep: config: data: unknown data spec 'lnear:n=4'"),
    ({**GRID, "seeds": [1, 1]}, r"sweep: config: seeds must not repeat a seed; got \[1, 1\]\."),
    ({**GRID, "dtype": "half"}, r"sweep: config: dtype must be 'float32' or 'float64'; got 'half'\."),
    ({k: v for k, v in GRID.items() if k != "data"}, r"sweep: config: field 'data' is required\."),
])
def test_bad_sweep_configs_give_one_line(grid: dict, match: str) -> None:
    from permsym.ensemble import load_sweep_config

    with pytest.raises(ValueError, match=match) as info:
        load_sweep_config(grid)
    assert "\n" not in str(info.value)


def test_sweep_config_files(tmp_path: Path) -> None:
    from permsym.ensemble import load_sweep_config

    toml = tmp_path / "grid.toml"
    toml.write_text('archs = ["mlp:4-8-1"]\ndata = "linear:n=64,d=4"\nlrs = [0.1]\nseeds = [3, 5]\n')
    assert load_sweep_config(toml).seed_list == [3, 5]
    (tmp_path / "grid.yaml").write_text("archs: []")
    with pytest.raises(ValueError, match=r"sweep: config file must end in .json or .toml; got 'grid.yaml'\."):
        load_sweep_config(tmp_path / "grid.yaml")
    (tmp_path / "bad.toml").write_text("archs = [")
    with pytest.raises(ValueError, match=r"sweep: bad.toml is not valid TOML: "):
        load_sweep_config(tmp_path / "bad.toml")
