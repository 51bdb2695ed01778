"""The torch device a ``--device`` flag names, checked once for every command (train, demo, conform)."""

from __future__ import annotations

from .errors import ESPOInputError


def torch_device(name: str, flag: str = "--device"):
    """The ``torch.device`` called ``name``; ESPOInputError (one line naming the flag) when it is
    not a device or not available on this machine. Imports torch only when called."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ESPOInputError(f"{flag} {name}: not a device ({e})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ESPOInputError(f"{flag} {name}: CUDA is not available (torch {torch.__version__}, "
                                 f"torch.cuda.is_available() is False); use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ESPOInputError(f"{flag} {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ESPOInputError(f"{flag} {name}: MPS is not available on this machine; use {flag} cpu")
    return device
