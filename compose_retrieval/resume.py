"""A run's resumable state: model, optimizer, LR schedule, random states and step, in one safetensors file.

Written whole or not at all (``atomic_write``), so a kill during a save leaves the
previous state; no pickle: the tensors are safetensors and everything else (the
optimizer's hyper-parameters, the scheduler's counters, Python's and NumPy's random
states, the step) is JSON in the file's metadata. Resuming from it continues a run
exactly: with the batch order of ``RunOrder``, a run stopped at step k and resumed ends
with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoint import atomic_write
from .errors import CheckpointError

__all__ = ["STATE_NAME", "save_state", "load_state", "peek_state", "has_state"]

STATE_NAME = "resume.safetensors"
_FORMAT = "compose-retrieval-run-state"
_VERSION = 1


def _random_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    return tensors, {"numpy": [kind, pos, has_gauss, cached], "python": [version, list(internal), gauss]}


def _restore_random_states(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_state(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, extra: dict[str, Any] | None = None) -> Path:
    """Write the state of a run after ``step`` steps; ``extra``: JSON the loop wants back (its best recall, ...)."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    layout: dict[str, dict[str, Any]] = {}
    for index, values in optimizer_state["state"].items():
        layout[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().cpu()
                layout[str(index)][name] = {"tensor": True}
            else:
                layout[str(index)][name] = {"value": value}
    random_tensors, random_meta = _random_states()
    tensors.update(random_tensors)
    state = {
        "format": _FORMAT, "version": _VERSION, "step": step,
        "optimizer": {"param_groups": optimizer_state["param_groups"], "state": layout},
        "scheduler": scheduler.state_dict(), "random": random_meta, "extra": extra or {},
    }
    metadata = {"format": _FORMAT, "state": json.dumps(state)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return Path(path)


def _like(value: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    if value.shape == parameter.shape and value.dtype == parameter.dtype:
        return torch.empty_like(parameter).copy_(value)
    return value.to(parameter.device)


def has_state(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / STATE_NAME).is_file()


def peek_state(path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """(step, extra) of a saved state, without reading its tensors (what to rebuild before loading it)."""
    state, _ = _read(path, tensors=False)
    return int(state["step"]), state["extra"]


def _read(path: str | os.PathLike, *, tensors: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise CheckpointError(f"{path} is not a compose-retrieval run state")
            state = json.loads(metadata["state"])
            values = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except CheckpointError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path} cannot be read as a run state ({type(exc).__name__}: {str(exc)[:200]}); "
                              "it is damaged: start a new run, or resume from a copy") from None
    if state.get("version") != _VERSION:
        raise CheckpointError(f"{path} is a run state of version {state.get('version')}; this version reads {_VERSION}")
    return state, values


def load_state(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, dict[str, Any]]:
    """Put the saved state into ``model``, ``optimizer``, ``scheduler`` and the random generators; (step, extra)."""
    state, tensors = _read(path)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    # a state tensor takes its parameter's memory layout (channels-last convolutions): saved contiguous, a moment
    # laid out otherwise would meet the fused optimizer's kernels element for element in the wrong order
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer_state = {"param_groups": state["optimizer"]["param_groups"], "state": {}}
    for index, layout in state["optimizer"]["state"].items():
        parameter = parameters[int(index)]
        optimizer_state["state"][int(index)] = {
            name: _like(tensors[f"optimizer.{index}.{name}"], parameter) if entry.get("tensor") else entry["value"]
            for name, entry in layout.items()
        }
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    _restore_random_states(tensors, state["random"])
    return int(state["step"]), state["extra"]
