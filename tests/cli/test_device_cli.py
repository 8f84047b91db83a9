"""``--device cpu|cuda|auto`` on every command: parsing, the CPU path, the one-line CUDA error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from permsym.backends import resolve_device
from permsym.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
DATA = "linear:n=64,d=4"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1):
        path = str(folder / f"m{seed}.safetensors")
        assert main(["train", "mlp:4-8-1", "--data", DATA, "--out", path, "--epochs", "2", "--seed", str(seed),
                     "--device", "cpu", "--json"]) == 0
        paths.append(path)
    return paths


def _commands(ckpt: list[str], tmp: Path) -> dict[str, list[str]]:
    grid = tmp / "grid.json"
    grid.write_text(json.dumps({"archs": ["mlp:4-8-1"], "data": DATA, "lrs": [0.1], "seeds": 1, "epochs": 1}))
    return {
        "count": ["count", "mlp:4-8-2"],
        "info": ["info", ckpt[0]],
        "train": ["train", "mlp:4-8-1", "--data", DATA, "--out", str(tmp / "t.safetensors"), "--epochs", "1"],
        "hessian": ["hessian", ckpt[0], "--data", DATA, "--top-k", "2"],
        "noise": ["noise", ckpt[0], "--data", DATA, "--batch-size", "8", "--lr", "0.05"],
        "equilibrium": ["equilibrium", ckpt[0], "--data", DATA, "--lr", "0.05", "--batch-size", "8", "--steps", "200",
                        "--top-k", "1"],
        "align": ["align", ckpt[0], ckpt[1]],
        "stability": ["stability", *ckpt],
        "track": ["track", *ckpt],
        "paper": ["paper", "--scale", "tiny", "--only", "c1_counts", "--out", str(tmp / "paper")],
        "sweep": ["sweep", str(grid), "--out", str(tmp / "sweep")],
    }


COMMANDS = ["count", "info", "train", "hessian", "noise", "equilibrium", "align", "stability", "track", "paper",
            "sweep"]


@NO_CUDA
@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_without_cuda_is_one_line_and_exit_2(command: str, checkpoints: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = _commands(checkpoints, tmp_path)[command]
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == (f"permsym {command}: device 'cuda' needs a CUDA build of torch and a visible GPU; "
                   f"torch {torch.__version__} sees none. Use --device cpu or auto.\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_device_is_one_line(command: str, checkpoints: list[str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = _commands(checkpoints, tmp_path)[command]
    assert main([*args, "--device", "gpu"]) == 2
    assert capsys.readouterr().err == f"permsym {command}: device must be one of cpu, cuda, auto; got 'gpu'.\n"


@NO_CUDA
@pytest.mark.parametrize("command", ["count", "info", "train", "hessian", "noise", "align", "sweep"])
def test_auto_runs_on_the_cpu_and_equals_cpu(command: str, checkpoints: list[str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for device in ("cpu", "auto"):
        args = _commands(checkpoints, tmp_path / device)[command] if (tmp_path / device).mkdir() is None else []
        assert main([*args, "--device", device, "--json"]) == 0
        payload = json.loads(capsys.readouterr().out)
        outputs.append(json.dumps(_without_paths_and_times(payload), sort_keys=True))
    assert outputs[0] == outputs[1]


def _without_paths_and_times(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _without_paths_and_times(v) for k, v in obj.items()
                if k not in ("checkpoint", "out", "seconds") and "seconds" not in k}
    if isinstance(obj, list):
        return [_without_paths_and_times(v) for v in obj]
    return obj


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^hessian: device 'cuda' needs a CUDA build of torch and a visible GPU"):
        resolve_device("cuda", call="hessian")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto picks cuda where there is one
    assert resolve_device("auto") == torch.device("cuda")


def test_ensemble_on_cpu_device_equals_default() -> None:
    from permsym.ensemble import train

    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(70, 6, generator=gen), torch.randint(3, (70,), generator=gen)
    a = train("mlp:6-16-16-3", (X, y), [0, 1], epochs=1, lr=0.05, batch_size=16)
    b = train("mlp:6-16-16-3", (X, y), [0, 1], epochs=1, lr=0.05, batch_size=16, device="cpu")
    assert a.vectorised and b.vectorised and a.losses == b.losses
    for ma, mb in zip(a.models, b.models, strict=True):
        for (name, pa), pb in zip(ma.named_parameters(), mb.parameters(), strict=True):
            assert torch.equal(pa, pb), name
