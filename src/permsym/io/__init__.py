"""Self-describing checkpoints in safetensors (never pickle).

The file's metadata holds ``permsym_arch`` (the architecture string) and ``permsym_format``;
masks and other buffers are ordinary tensors in the file, so a permuted masked model
round-trips exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from permsym._errors import PermsymError

FORMAT = "permsym-checkpoint/1"

__all__ = ["FORMAT", "atomic_write", "json_safe", "load", "load_state", "save"]


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by the strings ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has none).

    Examples:
        >>> json_safe({"a": [1.0, float("nan")], "b": float("-inf")})
        {'a': [1.0, 'nan'], 'b': '-inf'}
    """
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved file gets the usual mode
        with open(tmp, "rb+") as f:  # the bytes reach the disk before the name points at them
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict and architecture string to ``path`` (atomically).

    ``metadata`` values are stored JSON-encoded and come back from :func:`load_state`.
    """
    arch = getattr(model, "permsym_arch", None)
    if not isinstance(arch, str):
        raise PermsymError(
            "save: model has no architecture string; build it with permsym.build(arch) "
            "(or set model.permsym_arch) so the checkpoint can rebuild it."
        )
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"permsym_format": FORMAT, "permsym_arch": arch}
    for key, value in (metadata or {}).items():
        meta[f"user.{key}"] = json.dumps(value)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors and metadata (``arch`` plus the user metadata)."""
    p = Path(path)
    if not p.is_file():
        raise PermsymError(f"load: no checkpoint at {str(p)!r}.")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PermsymError(
            f"load: {str(p)!r} is not a readable safetensors file ({first_line}); "
            f"it may be truncated or of another format."
        ) from None
    if raw_meta.get("permsym_format") != FORMAT or "permsym_arch" not in raw_meta:
        raise PermsymError(
            f"load: {str(p)!r} is a safetensors file but not a permsym checkpoint "
            f"(no 'permsym_arch' in its metadata); save it with permsym.save."
        )
    meta: dict[str, Any] = {"arch": raw_meta["permsym_arch"]}
    for key, value in raw_meta.items():
        if key.startswith("user."):
            try:
                meta[key[5:]] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise PermsymError(
                    f"load: {str(p)!r} has metadata {key[5:]!r} that is not valid JSON ({exc.msg} at "
                    f"character {exc.pos}); permsym.save writes JSON there."
                ) from None
    return tensors, meta


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its tensors (dtype as stored)."""
    from permsym.archs import build

    tensors, meta = load_state(path)
    model = build(meta["arch"])
    floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
    if floating:
        model = model.to(floating[0])
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in tensors:
            raise PermsymError(f"load: {str(path)!r} lacks tensor {name!r} that {meta['arch']!r} needs.")
        if tensors[name].shape != tensor.shape:
            raise PermsymError(
                f"load: tensor {name!r} in {str(path)!r} has shape {tuple(tensors[name].shape)}; "
                f"{meta['arch']!r} needs {tuple(tensor.shape)}."
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise PermsymError(f"load: {str(path)!r} has tensor {extra[0]!r} that {meta['arch']!r} does not.")
    model.load_state_dict(tensors)
    model.permsym_arch = meta["arch"]
    return model
