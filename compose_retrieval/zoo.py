"""The model zoo: named checkpoints, resolved to a local safetensors file and loaded.

``load_pretrained("tirg-css-synthetic")`` looks the name up in model_zoo/manifest.json
and in the entries plugins register (``register_pretrained``), then finds the file:

1. a path to a checkpoint file (or a run directory) is used as it is;
2. a file shipped in model_zoo/ (package data) is used from there, whatever
   the cache holds under that name;
3. a name already in the cache directory (``cache_dir`` argument, else the environment
   variable COMPOSE_RETRIEVAL_CACHE, else ~/.cache/compose-retrieval) is used from there
   once it matches the sha256 its entry records (a file that does not is an error);
4. otherwise it is downloaded (torch.hub.download_url_to_file) from the entry's URL, or
   from the Hugging Face Hub's public address of its ``hf_hub_id`` (no huggingface_hub
   needed; HF_ENDPOINT picks a mirror), checked against its sha256 and moved into the
   cache whole. With ``offline=True`` (or
   COMPOSE_RETRIEVAL_OFFLINE=1 or HF_HUB_OFFLINE=1) a missing file is an error that
   says how to get it, never a hang.

Only safetensors files are read: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import hashlib
import importlib.resources
import json
import os
import socket
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.hub

from . import registry
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import CheckpointError, UnknownNameError
from .preprocessing import Preprocessing
from .model import ComposedRetrievalModel

__all__ = [
    "CACHE_ENV", "OFFLINE_ENV", "SUFFIX", "PretrainedEntry", "zoo_dir", "list_pretrained", "pretrained_info", "cache_dir",
    "is_offline", "resolve", "load_pretrained", "save_pretrained", "export_pretrained", "sha256_of", "entry_dict",
]

CACHE_ENV = "COMPOSE_RETRIEVAL_CACHE"
OFFLINE_ENV = "COMPOSE_RETRIEVAL_OFFLINE"
SUFFIX = ".safetensors"


def zoo_dir() -> Path:
    """The zoo's folder: model_zoo/ at the top of the repository, installed as the package data of
    ``compose_retrieval.model_zoo`` (the manifest and the shipped checkpoints travel in a wheel)."""
    return Path(str(importlib.resources.files("compose_retrieval.model_zoo")))


@dataclass
class PretrainedEntry:
    """One named checkpoint of the zoo."""

    name: str
    description: str = ""
    file: str | None = None  # a file in model_zoo/
    url: str | None = None
    hf_hub_id: str | None = None  # "owner/repo/path/in/repo.safetensors"
    sha256: str | None = None
    dataset: str | None = None
    protocol: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    command: str | None = None  # what reproduces (or produces) the file
    source_url: str | None = None  # where the original of an imported checkpoint is published
    source: str = "model_zoo/manifest.json"

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> "PretrainedEntry":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "source"}
        return cls(source=source, **known)


def _entries() -> dict[str, PretrainedEntry]:
    entries: dict[str, PretrainedEntry] = {}
    manifest = zoo_dir() / "manifest.json"
    if manifest.is_file():
        try:
            for item in json.loads(manifest.read_text())["models"]:
                entries[item["name"]] = PretrainedEntry.from_dict(item, str(manifest))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{manifest} is not a valid zoo manifest ({type(exc).__name__}: {exc})") from None
    for name in registry.list_components("pretrained"):
        registered = registry.get_entry("pretrained", name)
        if name in entries:  # the manifest's entry stays: a plugin cannot swap a shipped checkpoint's meaning
            warnings.warn(f"plugin {registered.plugin!r} registers the zoo name {name!r}, which the manifest already has; "
                          f"the manifest's entry is used (rename the plugin's)", RuntimeWarning, stacklevel=2)
            continue
        entries[name] = PretrainedEntry.from_dict({"name": name, **registered.factory}, f"plugin {registered.plugin!r}")
    return entries


def list_pretrained(pattern: str = "*") -> list[str]:
    """Sorted names of the zoo's checkpoints matching a wildcard pattern."""
    return sorted(n for n in _entries() if fnmatch.fnmatchcase(n, pattern))


def pretrained_info(name: str) -> PretrainedEntry:
    entries = _entries()
    if name not in entries:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise UnknownNameError("pretrained model", shown, difflib.get_close_matches(name, list(entries), n=3), sorted(entries))
    return entries[name]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    if override is not None:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "compose-retrieval"


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


def resolve(name_or_path: str | os.PathLike, *, cache: str | os.PathLike | None = None, offline: bool | None = None) -> Path:
    """The local checkpoint file of a path or a zoo name (see the module docstring for the order)."""
    name = str(name_or_path)
    path = Path(name_or_path)
    try:
        if path.is_dir() and (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        if path.is_file():
            return path
    except OSError as exc:  # a name too long for a path, a file we may not read
        raise CheckpointError(f"not a checkpoint path or zoo name: {name[:80]!r}{'...' if len(name) > 80 else ''} ({exc.strerror})") from None
    if path.suffix == SUFFIX or os.sep in name:
        raise CheckpointError(f"checkpoint not found: {path}")
    entry = pretrained_info(name)
    if entry.file and (zoo_dir() / entry.file).is_file():  # shipped with the package: nothing to fetch or trust
        return zoo_dir() / entry.file
    cached = cache_dir(cache) / f"{entry.name}{SUFFIX}"
    if cached.is_file():
        if entry.sha256 and sha256_of(cached) != entry.sha256.lower():
            raise CheckpointError(
                f"the cached {cached} has sha256 {sha256_of(cached)[:16]}..., not the {entry.sha256[:16]}... its entry "
                f"({entry.source}) records: it was changed or damaged; delete it to download it again"
            )
        return cached
    if not (entry.url or entry.hf_hub_id):
        how = f"run: {entry.command}" if entry.command else "it has no download source"
        raise CheckpointError(f"{entry.name!r} is not in {cached.parent} yet; to make it, {how}")
    if is_offline(offline):
        how = f" or run: {entry.command}" if entry.command else ""
        raise CheckpointError(
            f"{entry.name!r} is not cached and downloads are off (offline); put the file at {cached}: "
            f"download {_source_url(entry)}{how}"
        )
    return _download(entry, cached)


def _source_url(entry: PretrainedEntry) -> str:
    """The URL to fetch: ``url``, else the Hub's public address of ``hf_hub_id`` ("owner/repo/path/in/repo")."""
    if entry.url:
        return entry.url
    parts = entry.hf_hub_id.split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise CheckpointError(
            f"{entry.name!r} has hf_hub_id {entry.hf_hub_id[:100]!r} ({entry.source}); it must be owner/repo/path/in/repo"
        )
    owner, repo, filename = parts
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{owner}/{repo}/resolve/main/{filename}"


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """torch.hub opens the URL without a timeout: give sockets one meanwhile, so a stalled server is an error, not a hang
    (only when none is set; process-wide while the download runs, as socket offers nothing narrower)."""
    if socket.getdefaulttimeout() is not None:
        yield
        return
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(None)


def _download(entry: PretrainedEntry, destination: Path) -> Path:
    """Fetch with torch.hub into a hidden file beside ``destination``, check the sha256, then move it into place:
    the cache holds whole, checked files only, never a file under its final name before the check."""
    url = _source_url(entry)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    os.close(fd)
    try:
        try:
            with _socket_timeout(60):
                torch.hub.download_url_to_file(url, tmp, progress=sys.stderr.isatty())
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors; ValueError: not a URL
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"cannot download {entry.name!r} from {url}: {reason}") from None
        digest = sha256_of(tmp)
        if entry.sha256 and digest != entry.sha256.lower():
            raise CheckpointError(
                f"the download of {entry.name!r} has sha256 {digest}, not the {entry.sha256} its "
                f"entry ({entry.source}) records; the file was discarded"
            )
        os.replace(tmp, destination)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return destination


def load_pretrained(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
) -> tuple[ComposedRetrievalModel, Preprocessing | None]:
    """A zoo name or a checkpoint path -> (the model in eval mode on ``device``, its preprocessing)."""
    model, _ = load_checkpoint(resolve(name_or_path, cache=cache_dir, offline=offline), map_location=device)
    model.place(device)
    return model, model.preprocessing


def save_pretrained(
    model: ComposedRetrievalModel,
    path: str | os.PathLike,
    *,
    metrics: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    half: bool = False,
    exclusive: bool = False,
) -> Path:
    """Save a checkpoint for the zoo; ``half`` stores float weights as float16 (they load back as float32);
    ``exclusive``: refuse (FileExistsError) to replace an existing file."""
    return save_checkpoint(model, path, metrics=metrics, recipe=recipe, dtype=torch.float16 if half else None, exclusive=exclusive)


def export_pretrained(
    model: ComposedRetrievalModel,
    out: str | os.PathLike,
    *,
    evaluate,
    recipe: dict[str, Any] | None = None,
    half: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``model`` as the zoo file ``out`` with the metrics its stored (rounded) weights reach.

    ``evaluate(path)`` scores a saved copy first, written beside ``out`` and always removed;
    ``out`` appears whole, with the metrics, only when that succeeds, and an existing
    ``out`` is replaced only with ``overwrite``. Returns {"sha256", "metrics"}.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_pretrained(model, scratch, recipe=recipe, half=half)
        metrics = evaluate(scratch)
    finally:
        Path(scratch).unlink(missing_ok=True)
    try:
        save_pretrained(model, out, metrics=metrics, recipe=recipe, half=half, exclusive=not overwrite)
    except FileExistsError:
        raise CheckpointError(f"{out} exists; give --overwrite to replace it, or another file name") from None
    return {"sha256": sha256_of(out), "metrics": metrics}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def entry_dict(entry: PretrainedEntry) -> dict[str, Any]:
    return {k: v for k, v in asdict(entry).items() if v not in (None, {}, "")}

