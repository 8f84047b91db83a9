import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import permsym
from permsym._errors import PermsymError
from permsym.io import load_state


@pytest.mark.parametrize("arch", ["mlp:4-6-2,act=tanh", "mlp:5-6-3,density=0.5,mask_seed=2", "convnet:1x4x4-3-2", "resmlp:3-4-2"])
def test_round_trip_is_exact(tmp_path: Path, arch: str) -> None:
    model = permsym.build(arch, seed=1).double()
    path = permsym.save(model, tmp_path / "m.safetensors", metadata={"seed": 1, "note": "x"})
    loaded = permsym.load(path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    assert load_state(path)[1] == {"arch": arch, "seed": 1, "note": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left


def test_permuted_masks_round_trip(tmp_path: Path) -> None:
    """Masks live in the file, so a checkpoint whose masks differ from mask_seed's loads as saved."""
    model = permsym.build("mlp:5-6-2,density=0.5")
    with torch.no_grad():
        model.fc1.mask.copy_(model.fc1.mask.flip(0))
    loaded = permsym.load(permsym.save(model, tmp_path / "m.safetensors"))
    assert torch.equal(loaded.fc1.mask, model.fc1.mask)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PermsymError, match="no checkpoint at"):
        permsym.load(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path: Path) -> None:
    path = permsym.save(permsym.build("mlp:4-6-2"), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PermsymError, match="not a readable safetensors file.*truncated"):
        permsym.load(path)


def test_foreign_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(PermsymError, match="not a permsym checkpoint"):
        permsym.load(path)


def test_pickle_file_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(PermsymError, match="not a readable safetensors file"):
        permsym.load(path)


def test_tensor_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    meta = {"permsym_format": "permsym-checkpoint/1", "permsym_arch": "mlp:4-6-2"}
    state = {k: v for k, v in permsym.build("mlp:4-7-2").state_dict().items()}
    save_file(state, str(path), metadata=meta)
    with pytest.raises(PermsymError, match=r"tensor 'fc1.weight' .* has shape \(7, 4\); 'mlp:4-6-2' needs \(6, 4\)"):
        permsym.load(path)


def test_save_needs_an_architecture(tmp_path: Path) -> None:
    with pytest.raises(PermsymError, match="model has no architecture string"):
        permsym.save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_metadata_is_json(tmp_path: Path) -> None:
    path = permsym.save(permsym.build("mlp:2-2"), tmp_path / "m.safetensors", metadata={"a": [1, 2]})
    assert json.dumps(load_state(path)[1]["a"]) == "[1, 2]"


def test_saved_files_get_the_usual_mode(tmp_path: Path) -> None:
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = permsym.save(permsym.build("mlp:2-2"), tmp_path / "m.safetensors")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_metadata_that_is_not_json_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    model = permsym.build("mlp:4-6-2")
    meta = {"permsym_format": "1", "permsym_arch": "mlp:4-6-2", "user.note": "{not json"}
    from permsym.io import FORMAT

    meta["permsym_format"] = FORMAT
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(PermsymError, match=r"bad.safetensors' has metadata 'note' that is not valid JSON"):
        permsym.load(path)
