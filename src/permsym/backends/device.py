"""``cpu | cuda | auto``: the device a command computes on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str = "auto", *, call: str = "permsym") -> torch.device:
    """``auto`` is ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.

    Raises:
        ValueError: for an unknown name, or ``cuda`` on a machine without CUDA.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    if device not in DEVICES:
        raise ValueError(f"{call}: device must be one of {', '.join(DEVICES)}; got {device!r}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{call}: device 'cuda' needs a CUDA build of torch and a visible GPU; "
                         f"torch {torch.__version__} sees none. Use --device cpu or auto.")
    return torch.device(device)
