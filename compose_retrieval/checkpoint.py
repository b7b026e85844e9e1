"""Checkpoints: one self-describing safetensors file, written whole or not at all.

Tensors are the model's state dict. The metadata (strings, as safetensors demands)
holds JSON: the format version, the model spec (component names and options, enough
to rebuild the model through the registry), the components' non-tensor state (the
LSTM vocabulary), the preprocessing, the training recipe and the metrics.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import registry
from .errors import CheckpointError, UnknownNameError
from .interfaces import Preprocessing
from .model import ComposedRetrievalModel, ModelSpec, build_model

FORMAT_VERSION = 1
_JSON_KEYS = ("model", "extra_state", "preprocessing", "recipe", "metrics", "plugins")
_COMPONENTS = ("image_encoder", "text_encoder", "combiner")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)``, then move the file into place: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions of any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    model: ComposedRetrievalModel,
    path: str | os.PathLike,
    *,
    metrics: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` to ``path`` as a self-describing safetensors file.

    ``dtype`` (e.g. torch.float16) stores floating-point tensors smaller; loading casts
    them back to the model's own dtype.
    """
    if model.spec is None:
        raise CheckpointError("this model has no spec; build it with compose_retrieval.build_model to save it")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {
        "format": "compose-retrieval",
        "format_version": str(FORMAT_VERSION),
        "model": json.dumps(model.spec.to_dict()),
        "extra_state": json.dumps(model.extra_state_metadata()),
        "preprocessing": json.dumps(model.preprocessing.to_dict() if model.preprocessing else None),
        "recipe": json.dumps(recipe or {}),
        "metrics": json.dumps(metrics or {}),
        # which plugin (and package) provided each component, so a machine without it is told what to install
        "plugins": json.dumps({key: _provenance(key, getattr(model.spec, key).name) for key in _COMPONENTS}),
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return Path(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (give a run directory or a .safetensors file)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if raw.get("format") != "compose-retrieval":
        raise CheckpointError(f"{path} is a safetensors file but not a compose-retrieval checkpoint (no 'format' metadata)")
    version = int(raw.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this library reads ({FORMAT_VERSION}); "
            "upgrade compose-retrieval"
        )
    meta: dict[str, Any] = {"format_version": version}
    for key in _JSON_KEYS:
        meta[key] = json.loads(raw[key]) if key in raw else None
    return meta


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[ComposedRetrievalModel, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, load its weights strictly, return (model in eval mode, metadata)."""
    meta = read_metadata(path)
    spec = ModelSpec.from_dict(meta["model"])
    try:
        preprocessing = Preprocessing.from_dict(meta["preprocessing"]) if meta["preprocessing"] else None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} records a preprocessing this version cannot apply ({exc}); upgrade compose-retrieval") from None
    try:
        model = build_model(spec, preprocessing, for_checkpoint=True)
    except UnknownNameError as exc:
        origin = next((o for k, o in (meta["plugins"] or {}).items() if getattr(spec, k).name == exc.name), None)
        if origin and origin.get("package"):
            install = f"it came from plugin {origin['plugin']!r} of the package {origin['package']!r}: pip install {origin['package']}"
        elif origin:
            install = f"it came from plugin {origin['plugin']!r}, registered in-process (register_plugin): register it again"
        else:
            install = "install the plugin that registers it"
        raise CheckpointError(
            f"{path} needs the {exc.kind} {exc.name!r}, which no installed plugin provides; {install} "
            f"(installed {exc.kind}s: {', '.join(exc.available) or 'none'})"
        ) from None
    model.load_extra_state_metadata(meta["extra_state"] or {})
    state = load_file(str(path), device=str(map_location))

    def named(key: str) -> str:  # "combiner 'tirg' weights": the component, then the tensor
        head, _, rest = key.partition(".")
        return f"{head} {getattr(spec, head).name!r} {rest}" if head in _COMPONENTS else key

    parts = state_mismatches(model.state_dict(), state, named)
    if parts:
        raise CheckpointError(
            f"{path} does not match the model it describes: {'; '.join(parts)} "
            "(was it written by another version of that plugin?)"
        )
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    return model, meta


def state_mismatches(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], named=str) -> list[str]:
    """What keeps ``state`` from loading strictly into a model whose state dict is ``expected``, one phrase a kind
    (missing, unexpected, shape mismatch); ``named`` turns a key into the name the user should read."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    parts = []
    if missing:
        parts.append(f"missing {_few([named(k) for k in missing])}")
    if unexpected:
        parts.append(f"unexpected {_few([named(k) for k in unexpected])}")
    if wrong:
        parts.append("shape mismatch " + _few(
            [f"{named(k)} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})" for k in wrong]))
    return parts


def _provenance(kind: str, name: str) -> dict[str, str] | None:
    try:
        return registry.provenance(kind, name)
    except UnknownNameError:  # a component built outside the registry
        return None


def _few(items: list[str], n: int = 4) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
