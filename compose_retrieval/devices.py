"""Where a run computes, and the seeds that make it repeat."""

from __future__ import annotations

import random

import numpy as np
import torch

from .errors import OptionError

__all__ = ["resolve_device", "seed_everything"]


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" (CUDA when present, else the CPU) or a torch device name that exists on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise OptionError(f"unknown device {str(name)[:60]!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {name}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"--device {name}: the MPS backend is not available here; use --device cpu (or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"--device {name}: compose-retrieval runs on cpu, cuda or mps")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
