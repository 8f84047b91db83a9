import json
from pathlib import Path

import pytest

import permsym
from permsym.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_count_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "count", "mlp:4-3-2-2", "mlp:6-5-2,density=0.5,mask_seed=1", "--json")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["arch"] for r in results] == ["mlp:4-3-2-2", "mlp:6-5-2,density=0.5,mask_seed=1"]
    assert results[0]["order"] == 12 and results[1]["order"] == 1
    assert results[1]["masked"] is True


def test_count_table_and_formula(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "count", "convnet:1x4x4-3-2")
    assert code == 0 and "convnet:1x4x4-3-2" in out and "0.78" in out  # log10 3!
    code, out, _ = run(capsys, "count", "--formula", "mlp:10-100000-100000-10,act=tanh", "--json")
    row = json.loads(out)["results"][0]
    assert code == 0 and row["group_sizes"] == [100000, 100000]
    assert row["log10_order_with_sign_flips"] > row["log10_order_unmasked"] > 9e5


def test_info(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = permsym.save(permsym.build("mlp:4-5-2,act=tanh"), tmp_path / "m.safetensors", metadata={"epochs": 3})
    code, out, err = run(capsys, "info", str(path), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["arch"] == "mlp:4-5-2,act=tanh" and payload["num_params"] == 37
    assert payload["metadata"] == {"epochs": 3} and payload["order"] == 120
    code, out, _ = run(capsys, "info", str(path))
    assert code == 0 and "37 parameters" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["count", "mpl:3-4"], "permsym count: unknown architecture 'mpl' in 'mpl:3-4'"),
        (["count", "mlp:3-x-2"], "permsym count: bad dimension 'x'"),
        (["count", "mlp:3-4,act=swish"], "permsym count: bad value 'swish' for act"),
        (["count", "--formula", "mlp:3-4,depth=3"], "permsym count: unknown option 'depth=3'"),
        (["count", "--bogus"], "permsym count: No such option: --bogus"),
        (["count"], "permsym count: Missing argument"),
        (["info", "/nonexistent/x.safetensors"], "permsym info: load: no checkpoint at"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_info_on_a_truncated_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = permsym.save(permsym.build("mlp:4-5-2"), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:40])
    code, _, err = run(capsys, "info", str(path))
    assert code == 2 and "not a readable safetensors file" in err and err.count("\n") == 1


def test_console_script_exit_code(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "permsym.cli", "count", "mpl:3-4"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("permsym count: unknown architecture 'mpl'")
