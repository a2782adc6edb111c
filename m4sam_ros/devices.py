"""Device names -> ``torch.device``, checked once, with a message a user can act on."""
from __future__ import annotations

import re

import torch

_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto" -> cuda when torch sees a GPU, else cpu; "cpu", "cuda", "cuda:N" as given, once
    checked to exist. Raises ValueError naming what is missing."""
    if isinstance(name, torch.device):
        name = str(name)
    if not _NAME.match(name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but torch sees no CUDA device (torch {torch.__version__}); "
                             "use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device
