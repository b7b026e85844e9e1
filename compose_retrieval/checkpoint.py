"""Checkpoints: one self-describing safetensors file, written whole or not at all.

Tensors are the model's state dict. The metadata (strings, as safetensors demands)
holds JSON: the format version, the model spec (component names and options, enough
to rebuild the model through the registry), the components' non-tensor state (the
LSTM vocabulary), the preprocessing, the training recipe and the metrics.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import registry
from .errors import CheckpointError, ComposeRetrievalError, UnknownNameError, plural
from .preprocessing import Preprocessing
from .model import ComponentSpec, ComposedRetrievalModel, ModelSpec, build_model

FORMAT_VERSION = 2  # 2: the metadata holds a sha256 of the tensor data ("tensor_sha256"), checked on load
_JSON_KEYS = {"model": dict, "extra_state": dict, "preprocessing": dict, "recipe": dict, "metrics": dict, "plugins": dict}
__all__ = [
    "FORMAT_VERSION", "atomic_write", "save_checkpoint", "load_checkpoint", "read_metadata", "tensors_sha256",
    "spec_from_metadata", "check_loaded_options", "state_mismatches", "install_hint",
]

_COMPONENTS = ("image_encoder", "text_encoder", "combiner")
_KIND_OF_COMPONENT = {"image_encoder": "image_encoder", "text_encoder": "text_encoder", "combiner": "combiner"}


_UMASK = os.umask(0)
os.umask(_UMASK)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` whose writer process is gone (killed mid-write)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")  # exactly this path's: not "out.5"'s
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        found = pattern.fullmatch(tmp.name)
        if found and not _alive(int(found.group(1))):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        return True
    return True


def atomic_write(path: str | os.PathLike, write, *, exclusive: bool = False) -> None:
    """Call ``write(tmp_path)``, then move the file into place: readers never see half a file.

    The temporary file is named after the writing process, so a later write removes what
    a killed writer left behind. ``exclusive``: fail with FileExistsError, leaving the
    existing file as it is, when ``path`` exists (two processes cannot both create it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions of any other
        if exclusive:
            try:
                os.link(tmp, path)  # atomic, and refuses an existing path
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: check, then move (a narrow race remains)
                if path.exists():
                    raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_checkpoint(
    model: ComposedRetrievalModel,
    path: str | os.PathLike,
    *,
    metrics: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    exclusive: bool = False,
) -> Path:
    """Write ``model`` to ``path`` as a self-describing safetensors file, whole or not at all.

    ``dtype`` (e.g. torch.float16) stores floating-point tensors smaller; loading casts
    them back to the model's own dtype. ``exclusive``: FileExistsError rather than
    replacing an existing file.
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
        "recipe": json.dumps(_finite(recipe or {})),
        "metrics": json.dumps(_finite(metrics or {})),  # nan (a recall over no queries) is written as null
        # which plugin (and package) provided each component, the dataset and the loss, so a machine without
        # one is told what to install
        "plugins": json.dumps(_provenances(model.spec, recipe or {})),
        "tensor_sha256": tensors_sha256(state),
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata), exclusive=exclusive)
    return Path(path)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: strict JSON, which loading demands."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes, in name order: what a checkpoint's data must hash to."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a checkpoint, without loading its tensors; anything malformed is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (give a run directory or a .safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if raw.get("format") != "compose-retrieval":
        raise CheckpointError(f"{path} is a safetensors file but not a compose-retrieval checkpoint (no 'format' metadata)")
    try:
        version = int(raw.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path} has a malformed format_version {raw['format_version'][:40]!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this library reads ({FORMAT_VERSION}); "
            "upgrade compose-retrieval"
        )
    if version < 1:
        raise CheckpointError(f"{path} has checkpoint format {version}; no version of compose-retrieval wrote that")
    unknown = sorted(set(raw) - {"format", "format_version", "tensor_sha256", *_JSON_KEYS})
    if unknown:
        raise CheckpointError(f"{path} has metadata fields this version does not know ({', '.join(unknown)[:200]}); upgrade compose-retrieval")
    meta: dict[str, Any] = {"format_version": version, "tensor_sha256": raw.get("tensor_sha256")}
    if version >= 2 and not isinstance(raw.get("tensor_sha256"), str):
        raise CheckpointError(f"{path} has no checksum of its tensors (tensor_sha256), which its format {version} records")
    for key, kind in _JSON_KEYS.items():
        if key not in raw:
            meta[key] = None
            continue
        try:
            value = json.loads(raw[key], parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(f"{path}: its metadata field {key!r} is not valid JSON ({str(exc)[:120]})") from None
        if value is not None and not isinstance(value, kind):
            raise CheckpointError(f"{path}: its metadata field {key!r} is a {type(value).__name__}, not a JSON object")
        meta[key] = value
    if meta["model"] is None:
        raise CheckpointError(f"{path} does not describe its model (no 'model' metadata)")
    return meta


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a checkpoint may hold")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[ComposedRetrievalModel, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, load its weights strictly, return (model in eval mode, metadata).

    Nothing the file says is trusted before it is checked: the metadata's structure and
    option values, the shape and kind of every tensor against the model it describes
    (compared on the meta device, so an absurd model is refused before any memory is
    taken), the checksum of the tensor data, and that every weight is finite.
    """
    meta = read_metadata(path)
    spec = _qualified(spec_from_metadata(path, meta["model"]), meta)
    try:
        preprocessing = Preprocessing.from_dict(meta["preprocessing"]) if meta["preprocessing"] else None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} records a preprocessing this version cannot apply ({_clip(exc)}); upgrade compose-retrieval") from None
    with safe_open(str(path), framework="pt") as f:
        header = {key: (f.get_slice(key).get_dtype(), tuple(f.get_slice(key).get_shape())) for key in f.keys()}
    with torch.device("meta"):  # the architecture alone: no memory, whatever sizes the metadata asks for
        skeleton = _build(path, spec, meta)
    mismatches = _header_mismatches(skeleton.state_dict(), header, lambda key: _named(spec, key))
    if mismatches:
        raise CheckpointError(
            f"{path} does not match the model it describes: {'; '.join(mismatches)} "
            "(was it written by another version of that plugin?)"
        )
    state = load_file(str(path), device="cpu")
    if meta["tensor_sha256"] is not None and tensors_sha256(state) != meta["tensor_sha256"]:
        raise CheckpointError(f"{path} is damaged: its tensor data does not match the checksum it records; get the file again")
    # judged as the model will hold them: a float64 1e300 is inf in float32, and isfinite knows no float8
    expected = skeleton.state_dict()
    state = {k: t.to(expected[k].dtype) if t.is_floating_point() else t for k, t in state.items()}
    bad = [key for key, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (nan or inf) in {_few([_named(spec, k) for k in bad])}; it cannot be used")
    model = _build(path, spec, meta)
    model.preprocessing = preprocessing
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    return model, meta


def _qualified(spec: ModelSpec, meta: dict[str, Any]) -> ModelSpec:
    """A component name that two installed plugins register is read as the one the checkpoint recorded making it."""
    origins = meta.get("plugins") or {}
    for key in _COMPONENTS:
        component, origin = getattr(spec, key), origins.get(key)
        plugin = origin.get("plugin") if isinstance(origin, dict) else None
        try:
            name = registry.qualify(_KIND_OF_COMPONENT[key], component.name, plugin if isinstance(plugin, str) else None)
        except ComposeRetrievalError:
            continue
        if name != component.name:
            setattr(spec, key, ComponentSpec(name, component.options))
    return spec


def spec_from_metadata(path: str | os.PathLike, spec: dict[str, Any]) -> ModelSpec:
    """The ModelSpec a checkpoint's 'model' field describes, checked field by field."""
    try:
        return ModelSpec.from_dict(spec)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} describes its model in a form this version cannot read ({_clip(exc)})") from None


def _build(path: str | os.PathLike, spec: ModelSpec, meta: dict[str, Any]) -> ComposedRetrievalModel:
    """The model of ``spec`` with the components' extra state; every failure is a CheckpointError naming ``path``."""
    try:
        for key in _COMPONENTS:
            component = getattr(spec, key)
            check_loaded_options(_KIND_OF_COMPONENT[key], component.name, component.options)
        model = build_model(spec, None, for_checkpoint=True)
        model.load_extra_state_metadata(meta["extra_state"] or {})
    except UnknownNameError as exc:
        raise CheckpointError(f"{path} needs the {exc.kind} {_clip(repr(exc.name), 100)}, which no installed plugin provides; "
                              f"{install_hint({**meta, 'spec': spec}, _COMPONENTS, exc)}") from None
    except CheckpointError as exc:  # a component's own; it may quote a value of any length from the file
        if len(str(exc)) > 600:
            raise CheckpointError(_clip(exc, 600)) from None
        raise
    except Exception as exc:  # the metadata is outside data: whatever it makes a component raise, it is refused
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} describes a model that cannot be built ({message})") from None
    return model


def check_loaded_options(kind: str, name: str, options: dict[str, Any]) -> None:
    """Options that come from a checkpoint: declared, typed and in range like a user's, and no path or URL
    anywhere in them unless the component names that option in its ``path_options``."""
    registry.check_options(kind, name, options)
    declared = set(getattr(registry.get_entry(kind, name).factory, "path_options", ()))
    for key, value in options.items():
        if key not in declared and (found := _path_like(value)) is not None:
            raise CheckpointError(
                f"{kind.replace('_', ' ')} {name!r} option {key!r} holds {found[:80]!r}, a path or URL; "
                "a checkpoint may not choose files to read"
            )


def _path_like(value: Any) -> str | None:
    """The first string in ``value`` (recursively) that looks like a file path or a URL, else None."""
    if isinstance(value, str):
        return value if any(c in value for c in "/\\:") or value.startswith(("~", ".")) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        if (found := _path_like(key) if isinstance(key, str) else None) or (found := _path_like(item)):
            return found
    return None


def _provenances(spec: ModelSpec, recipe: dict[str, Any]) -> dict[str, dict[str, str] | None]:
    found = {key: _provenance(key, getattr(spec, key).name) for key in _COMPONENTS}
    for kind in ("dataset", "loss"):
        if isinstance(recipe.get(kind), str):
            found[kind] = _provenance(kind, recipe[kind])
    return found


def install_hint(meta: dict[str, Any], kinds: tuple[str, ...], exc: UnknownNameError) -> str:
    """What to install for the unknown name of ``exc``: the plugin and package the checkpoint ``meta`` recorded for it
    under one of ``kinds`` (image_encoder, text_encoder, combiner, dataset, loss)."""
    names = {k: getattr(meta.get("spec"), k).name for k in _COMPONENTS if meta.get("spec") is not None}
    names.update({k: (meta.get("recipe") or {}).get(k) for k in ("dataset", "loss")})
    origin = next((o for k, o in (meta.get("plugins") or {}).items()
                   if k in kinds and names.get(k) == exc.name and isinstance(o, dict)), None)
    if origin and origin.get("package"):
        how = f"it came from plugin {origin.get('plugin')!r} of the package {origin['package']!r}: pip install {origin['package']}"
    elif origin:
        how = f"it came from plugin {origin.get('plugin')!r}, registered in-process (register_plugin): register it again"
    else:
        how = "install the plugin that registers it"
    return f"{how} (installed {plural(exc.kind)}: {', '.join(exc.available) or 'none'})"


def _named(spec: ModelSpec, key: str) -> str:
    """A state-dict key as the user should read it: "combiner 'tirg' weights"."""
    head, _, rest = key.partition(".")
    return f"{head} {getattr(spec, head).name!r} {rest}" if head in _COMPONENTS else key


def _dtype_kind(name: str) -> str:
    """The kind of a safetensors dtype name (F32, BF16, I64, U8, BOOL, ...)."""
    if name == "BOOL":
        return "bool"
    return "floating point" if name.startswith(("F", "BF")) else "integer" if name.startswith(("I", "U")) else name


def _header_mismatches(expected: dict[str, torch.Tensor], header: dict[str, tuple[str, tuple]], named) -> list[str]:
    """state_mismatches against a file's header (safetensors dtype names and shapes), plus tensors of the wrong kind."""
    parts = state_mismatches(expected, {k: torch.empty(shape, device="meta") for k, (_, shape) in header.items()}, named)
    wrong = []
    for key, tensor in expected.items():
        if key in header:
            stored = _dtype_kind(header[key][0])
            wanted = "floating point" if tensor.is_floating_point() else "bool" if tensor.dtype == torch.bool else "integer"
            if stored != wanted:
                wrong.append(f"{named(key)} ({header[key][0]} in the file, {wanted} in the model)")
    if wrong:
        parts.append("wrong dtype " + _few(wrong))
    return parts


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


def _clip(text: Any, n: int = 300) -> str:
    """``str(text)`` cut to ``n`` characters: an error quotes values from the file, which may be any length."""
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _few(items: list[str], n: int = 4) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
