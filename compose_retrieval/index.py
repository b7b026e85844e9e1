"""Search your own images: index a folder with a trained model, then query it with an image, a text or both.

``Index.build(folder, model, out)`` walks ``folder`` (.jpg .jpeg .png .webp, any case, recursive, sorted by relative
path), embeds every image with the model's own preprocessing through a DataLoader, and writes the index to ``out``:

- ``index.json``: the format, the model's identity (zoo name or None, the checkpoint file, its sha256), its spec and
  preprocessing, the indexed folder (absolute), the search backend and its options, ``files`` (relative posix path,
  size, mtime_ns; row i of the embeddings is file i) and ``skipped`` (path, reason, size, mtime_ns);
- ``embeddings.safetensors``: the tensor "embeddings", (N, D) float32 unit rows, and the build id that index.json
  records (a pair left mismatched by an interrupted write is detected, not used);
- for a FAISS backend, the folder ``search-<build id>/`` the backend writes (``vectors.faiss``), named after the build
  so that index.json, written last, always points at the files of its own build.

Every file is written whole or not at all; a build stopped by Ctrl-C saves the images embedded so far and raises
``RunInterrupted``, so that building again continues. Symbolic links: a linked directory is never entered; a linked file is
indexed when its target lies inside the folder, and listed as skipped otherwise. Unreadable images are skipped,
counted and listed with the reason, never fatal. Building again into the same ``out`` with the same model (the
checkpoint's sha256) is incremental: only new or changed files (size or mtime_ns) are read, deleted ones are dropped,
the rest keep their rows, and a skipped file is tried again once it changes; another model is refused.

``Index.load(out)`` reads it back and loads the model it was built with (from the zoo for a zoo name); a model that
moved is given with ``model=`` (``--model``), accepted only when its sha256 is the recorded one.
``index.search(image, text, k)``: image and text compose (``model.compose``), an image alone finds its nearest
images (``model.embed_images``), a text alone needs a combiner that ignores the image. Queries are unit vectors and
scores cosine similarities, as in evaluation.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import atomic_write, load_checkpoint
from .data import read_image
from .devices import resolve_device
from .errors import CheckpointError, ComposeRetrievalError, DatasetError, OptionError, RunInterrupted, UnreadableImage
from .model import ComposedRetrievalModel
from .preprocessing import Preprocessing
from .progress import CountProgress
from .vector_search import VectorSearch, check_backend
from .zoo import resolve, sha256_of

__all__ = ["INDEX_SUFFIXES", "INDEX_FORMAT_VERSION", "INDEX_FILE", "EMBEDDINGS_FILE", "BuildStats", "SearchResult", "Index"]

INDEX_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
"""File name endings (compared in lower case) that ``Index.build`` reads as images."""

INDEX_FORMAT_VERSION = 1
INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
_FORMAT = "compose-retrieval-index"
_SEARCH_DIR = re.compile(r"search-[0-9a-f]{16}")
_REBUILD = "build it again with compose-retrieval index (Index.build)"


@dataclass
class BuildStats:
    """What one ``Index.build`` did: files embedded (read and embedded now), reused (rows kept from the index that was
    there), dropped (rows of that index whose files are gone or no longer included), skipped (files listed as skipped:
    unreadable, or links out of the folder), and the seconds spent reading and embedding."""

    embedded: int = 0
    reused: int = 0
    dropped: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SearchResult:
    """The ranked answer to one query: ``paths`` (relative to the indexed folder, posix) and their cosine ``scores``,
    best first; ``mode`` is "composed" (image + text), "image" or "text"; ``text`` and ``image`` describe the query."""

    paths: list[str]
    scores: list[float]
    mode: str = "composed"
    text: str | None = None
    image: str | None = None
    excluded: str | None = None  # the query's own file, left out of the results

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": {"image": self.image, "text": self.text, "mode": self.mode, "excluded": self.excluded},
            "results": [{"rank": i + 1, "path": p, "score": s} for i, (p, s) in enumerate(zip(self.paths, self.scores))],
        }


@dataclass
class _File:
    path: str  # relative, posix
    size: int
    mtime_ns: int
    absolute: Path = field(repr=False, default=Path())


class Index:
    """An indexed folder: ``paths`` (relative, row order), ``embeddings`` (N, D) unit rows, the ``model`` that made
    them, its ``identity`` ({"name", "path", "sha256"}), ``skipped`` files ({"path", "reason", ...}), the search
    ``backend`` and its ``backend_options``, the ``directory`` the index lives in and, after ``build``, ``stats``.
    Make one with ``Index.build`` or ``Index.load``."""

    def __init__(self, *, directory: Path, folder: Path, files: list[_File], embeddings: Tensor,
                 model: ComposedRetrievalModel, identity: dict[str, Any], skipped: list[dict[str, Any]], backend: str,
                 backend_options: dict[str, Any], search: VectorSearch, include: list[str] | None,
                 device: torch.device, stats: BuildStats | None = None):
        self.directory = directory
        self.folder = folder
        self.files = files
        self.paths = [f.path for f in files]
        self.embeddings = embeddings
        self.model = model
        self.identity = identity
        self.skipped = skipped
        self.backend = backend
        self.backend_options = backend_options
        self.include = include
        self.device = device
        self.stats = stats
        self._search = search
        self._row_of = {p: i for i, p in enumerate(self.paths)}

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"Index({str(self.directory)!r}: {len(self)} images of {str(self.folder)!r}, backend {self.backend!r})"

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model.preprocessing

    @property
    def accepts_text_only(self) -> bool:
        """Whether ``search`` takes a text without an image (the model's combiner ignores the image)."""
        return not self.model.combiner.uses_image

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        folder: str | os.PathLike,
        model: str | os.PathLike,
        out: str | os.PathLike,
        *,
        backend: str | None = None,
        backend_options: dict[str, Any] | None = None,
        include: str | Sequence[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        device: str | torch.device = "auto",
        progress: bool = True,
    ) -> "Index":
        """Index the images of ``folder`` with ``model`` (a zoo name, a run directory or a checkpoint file) into the
        directory ``out``; see the module docstring. ``include``: glob pattern(s) a file's relative posix path must
        match (``*`` crosses folders: "*.png" is every PNG, "shoes/*" everything under shoes/; case-sensitive, while
        the image suffixes are matched in any case). ``backend`` (default "exact") and ``include`` left None when
        ``out`` holds an index keep what it was built with (``backend_options`` then change the recorded ones; ivf's
        nlist follows the number of images unless given); include="*" takes every image again. Returns the index,
        with ``stats`` saying what was embedded, reused, dropped and skipped."""
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        if backend is not None and not isinstance(backend, str):
            raise OptionError(f"the search backend is a name, not {type(backend).__name__}")
        backend_options = dict(backend_options or {})
        include = _patterns(include)
        root = Path(folder)
        if not root.is_dir():
            raise DatasetError(f"not a folder: {root}" if root.exists() else f"folder not found: {root}")
        root = Path(os.path.realpath(root))
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ComposeRetrievalError(f"{out} is a file; give a new or empty folder for the index")
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)

        checkpoint = resolve(model)
        identity = {
            "name": None if _is_path(model) else str(model),
            "path": str(Path(os.path.realpath(checkpoint))),
            "sha256": sha256_of(checkpoint),
        }
        previous = _previous_build(out, identity, root)
        if previous is not None and backend is None:  # building again keeps how the index searches
            backend = previous["backend"]
            recorded = {k: v for k, v in previous["backend_options"].items() if k != "nlist"}
            backend_options = {**recorded, **backend_options}
        if previous is not None and include is None:
            include = previous["include"]
        backend = backend or "exact"
        loaded, _ = load_checkpoint(checkpoint, map_location=device)
        loaded.place(device)
        preprocessing = _preprocessing_of(loaded, checkpoint)
        dim = loaded.spec.embed_dim
        check_backend(backend, backend_options)  # before the images are read, not after

        found, skipped = _walk(root, include)
        old_rows: dict[str, int] = {}
        old_skipped: dict[str, dict[str, Any]] = {}
        old_embeddings = torch.empty(0, dim)
        if previous is not None:
            old_embeddings = previous["embeddings"]
            old_rows = {f["path"]: i for i, f in enumerate(previous["files"])} if old_embeddings is not None else {}
            old_skipped = {s["path"]: s for s in previous["skipped"] if "size" in s}
            if old_embeddings is None:
                old_embeddings = torch.empty(0, dim)
        stats = BuildStats()
        source: list[int] = []  # per file kept: its row in old_embeddings (>= 0) or -(1 + row in the new ones)
        todo: list[_File] = []
        plan: list[tuple[_File, int | None]] = []  # (file, old row or None: to read)
        for item in found:
            row = old_rows.get(item.path)
            if row is not None and _same(previous["files"][row], item):
                plan.append((item, row))
                continue
            was = old_skipped.get(item.path)
            if was is not None and _same(was, item):  # unreadable before and unchanged: not tried again
                skipped.append(dict(was))
                continue
            plan.append((item, None))
            todo.append(item)

        new_embeddings, read, failures, seconds, interrupted = _embed(loaded, preprocessing, todo, batch_size,
                                                                      num_workers, device, progress)
        new_row_of = {item.path: row for row, item in enumerate(item for item, done in zip(todo, read.tolist()) if done)}
        files: list[_File] = []
        for item, old in plan:
            if old is not None:
                files.append(item)
                source.append(old)
                stats.reused += 1
            elif item.path in new_row_of:
                files.append(item)
                source.append(-1 - new_row_of[item.path])
                stats.embedded += 1
        for i, reason in failures.items():
            skipped.append({"path": todo[i].path, "reason": reason, "size": todo[i].size, "mtime_ns": todo[i].mtime_ns})
        skipped.sort(key=lambda s: s["path"])
        stats.dropped = len(set(old_rows) - {item.path for item in found})  # gone, or no longer included
        stats.skipped = len(skipped)
        stats.seconds = seconds

        index = torch.tensor([s if s >= 0 else len(old_embeddings) - 1 - s for s in source], dtype=torch.long)
        embeddings = torch.cat([old_embeddings.float(), new_embeddings])[index].contiguous()
        failed: BaseException | None = None
        try:
            search = VectorSearch(embeddings, backend, **backend_options)
        except (Exception, KeyboardInterrupt) as exc:  # the embeddings are saved all the same, with exact search
            failed = exc
            search = VectorSearch(embeddings, "exact")
        index_obj = cls(directory=out, folder=root, files=files, embeddings=embeddings, model=loaded, identity=identity,
                        skipped=skipped, backend=search.backend, backend_options=search.options, search=search,
                        include=include, device=device, stats=stats)
        index_obj._write()
        if failed is not None:
            saved = f"the {len(files)} embeddings are saved in {out} with exact search, and building again reuses them"
            if isinstance(failed, KeyboardInterrupt):
                raise RunInterrupted(f"interrupted while building the {backend} search index; {saved}") from None
            if isinstance(failed, ComposeRetrievalError):
                raise type(failed)(f"{failed}; {saved}") from None
            raise ComposeRetrievalError(f"building the {backend} search index failed ({type(failed).__name__}: "
                                        f"{str(failed).strip()[:200]}); {saved}") from failed
        if interrupted:  # what was embedded is saved: the same command embeds only the rest
            raise RunInterrupted(
                f"interrupted: {stats.embedded} of {len(todo)} images embedded and saved in {out} "
                f"({len(todo) - stats.embedded - len(failures)} still to embed); run the same command again to continue")
        return index_obj

    def _write(self) -> None:
        out = self.directory
        out.mkdir(parents=True, exist_ok=True)
        build_id = secrets.token_hex(8)
        search_dir = out / f"search-{build_id}"
        search_dir.mkdir()
        self._search.save(search_dir)
        if not any(search_dir.iterdir()):  # exact search writes nothing
            search_dir.rmdir()
            search_dir = None
        from safetensors.torch import save_file

        atomic_write(out / EMBEDDINGS_FILE,
                     lambda tmp: save_file({"embeddings": self.embeddings}, tmp, metadata={"build_id": build_id}))
        meta = {
            "format": _FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "build_id": build_id,
            "model": self.identity,
            "spec": self.model.spec.to_dict(),
            "preprocessing": self.model.preprocessing.to_dict(),
            "embed_dim": int(self.embeddings.shape[1]),
            "folder": str(self.folder),
            "include": self.include,
            "backend": self.backend,
            "backend_options": self.backend_options,
            "backend_dir": search_dir.name if search_dir is not None else None,
            "count": len(self.files),
            "files": [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in self.files],
            "skipped": self.skipped,
        }
        text = json.dumps(meta, indent=1)
        atomic_write(out / INDEX_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        for stale in out.iterdir():  # the search files of earlier builds: index.json no longer names them
            if stale.is_dir() and _SEARCH_DIR.fullmatch(stale.name) and (search_dir is None or stale != search_dir):
                shutil.rmtree(stale, ignore_errors=True)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, directory: str | os.PathLike, *, model: str | os.PathLike | None = None,
             device: str | torch.device = "auto") -> "Index":
        """The index in ``directory`` with the model it was built with. ``model``: the same checkpoint (a path, a run
        directory or a zoo name) where the recorded one moved; it must have the recorded sha256."""
        directory = Path(directory)
        meta = _read_index_json(directory)
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        identity = meta["model"]
        checkpoint = _recorded_checkpoint(directory, identity, model)
        loaded, _ = load_checkpoint(checkpoint, map_location=device)
        loaded.place(device)
        _preprocessing_of(loaded, checkpoint)
        if loaded.spec.embed_dim != meta["embed_dim"]:
            raise CheckpointError(f"{checkpoint} embeds in {loaded.spec.embed_dim} dimensions, but the index in "
                                  f"{directory} holds {meta['embed_dim']}; {_REBUILD}")
        embeddings = _read_embeddings(directory / EMBEDDINGS_FILE, meta)
        backend_dir = directory / meta["backend_dir"] if meta["backend_dir"] else directory
        search = VectorSearch.load(backend_dir, embeddings, meta["backend"], meta["backend_options"])
        files = [_File(f["path"], f["size"], f["mtime_ns"]) for f in meta["files"]]
        return cls(directory=directory, folder=Path(meta["folder"]), files=files, embeddings=embeddings, model=loaded,
                   identity=dict(identity), skipped=meta["skipped"], backend=meta["backend"],
                   backend_options=meta["backend_options"], search=search, include=meta["include"], device=device)

    def set_search_options(self, **options: Any) -> None:
        """Search wider or narrower without rebuilding (ivf: ``nprobe``; hnsw: ``ef_search``): more of the true top k,
        more slowly. For this ``Index`` object only; index.json keeps the options it was built with."""
        self._search.set_search_options(**options)
        self.backend_options = dict(self._search.options)

    # ------------------------------------------------------------------ searching

    @torch.no_grad()
    def search(self, image: Any = None, text: str | None = None, k: int = 10, *, exclude_self: bool = True) -> SearchResult:
        """The k indexed images nearest the query, best first. ``image``: a path, a PIL image or a (3, H, W) uint8
        tensor, preprocessed as the indexed images were; ``text``: the modification (empty counts as none). Image and
        text: ``model.compose``; image alone: ``model.embed_images``; text alone: only for a combiner that ignores
        the image. A query image that is a file of the index is left out of its own results unless ``exclude_self``
        is False."""
        _check_int("k", k, 1)
        if text is not None and not isinstance(text, str):
            raise OptionError(f"the query text must be a string, not {type(text).__name__}")
        text = text if text is not None and text.strip() else None
        if image is None and text is None:
            raise ComposeRetrievalError("a query needs an image, a text or both")
        model = self.model
        exclude, described = -1, None
        if image is not None:
            pixels, described = _query_pixels(image)
            if exclude_self and isinstance(image, (str, os.PathLike)):
                exclude = self._row_of_file(image)
            x = _prepare(self.preprocessing, pixels, described)[None].to(self.device)
            x = x.contiguous(memory_format=torch.channels_last)
            if text is not None:
                query, mode = model.compose(x, [text]), "composed"
            else:
                query, mode = model.embed_images(x), "image"
        else:
            if model.combiner.uses_image:
                raise ComposeRetrievalError(
                    "this model composes the text with a reference image; give an image too (a text alone works "
                    "only with a combiner that ignores the image)")
            size = self.preprocessing.image_size
            query, mode = model.compose(torch.zeros(1, 3, size, size, device=self.device), [text]), "text"
        query = F.normalize(query.float(), dim=-1).cpu()
        scores, ids = self._search.search(query, k, torch.tensor([exclude]))
        keep = ids[0] >= 0
        return SearchResult(
            paths=[self.paths[i] for i in ids[0][keep].tolist()],
            scores=[float(s) for s in scores[0][keep].tolist()],
            mode=mode, text=text, image=described,
            excluded=self.paths[exclude] if exclude >= 0 else None,
        )

    def _row_of_file(self, image: str | os.PathLike) -> int:
        """The row of the indexed file that the path ``image`` is (-1: none)."""
        real = Path(os.path.realpath(image))
        folder = Path(os.path.realpath(self.folder))
        if real.is_relative_to(folder):
            row = self._row_of.get(real.relative_to(folder).as_posix())
            if row is not None:
                return row
        given = Path(os.path.abspath(image))  # a link inside the folder, indexed under its own name
        if given.is_relative_to(folder):
            return self._row_of.get(given.relative_to(folder).as_posix(), -1)
        return -1

    def file_path(self, relative: str) -> Path:
        """The absolute path of the indexed file ``relative`` (a path of ``paths``, exactly). Anything else, and an
        indexed file that has since become a link out of the folder, is a ComposeRetrievalError: what a server may
        hand out is exactly the files of the index."""
        if not isinstance(relative, str) or relative not in self._row_of:
            shown = str(relative)[:200]
            raise ComposeRetrievalError(f"not a file of this index: {shown!r}")
        path = self.folder / relative
        if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(self.folder)):
            raise ComposeRetrievalError(f"{relative!r} now leads out of the indexed folder; it is not served")
        return path


# ---------------------------------------------------------------------- helpers


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{name} must be a whole number of at least {minimum}, not {value!r}")


def _patterns(include: str | Sequence[str] | None) -> list[str] | None:
    if include is None:
        return None
    patterns = [include] if isinstance(include, str) else list(include)
    if not all(isinstance(p, str) and p for p in patterns):
        raise OptionError("include: give glob patterns (strings) such as '*.png' or 'shoes/*'")
    return patterns or None


def _is_path(model: str | os.PathLike) -> bool:
    """Whether ``model`` names a file or a folder (else it is a zoo name, as zoo.resolve reads it)."""
    try:
        return Path(model).exists()
    except OSError:
        return False


def _preprocessing_of(model: ComposedRetrievalModel, checkpoint: Path) -> Preprocessing:
    if model.preprocessing is None:
        raise CheckpointError(f"{checkpoint} records no preprocessing, so it cannot say how to read images; "
                              "save it with one (a checkpoint from compose-retrieval train has it)")
    return model.preprocessing


def _same(recorded: dict[str, Any] | _File, item: _File) -> bool:
    if isinstance(recorded, _File):
        return recorded.size == item.size and recorded.mtime_ns == item.mtime_ns
    return recorded.get("size") == item.size and recorded.get("mtime_ns") == item.mtime_ns


def _walk(root: Path, include: list[str] | None) -> tuple[list[_File], list[dict[str, Any]]]:
    """The image files under ``root`` (already real), sorted by relative path, and those listed as skipped."""
    found: list[_File] = []
    skipped: list[dict[str, Any]] = []

    def unlisted(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        rel = where.relative_to(root).as_posix() if where.is_relative_to(root) else str(where)
        skipped.append({"path": rel, "reason": f"cannot list this folder ({exc.strerror or exc})"})

    # followlinks=False: a linked directory is listed in dirnames but never entered
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted, followlinks=False):
        dirnames.sort()
        for name in filenames:
            if not name.lower().endswith(INDEX_SUFFIXES):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if include and not any(fnmatch.fnmatchcase(rel, p) for p in include):
                continue
            if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(root):
                skipped.append({"path": rel, "reason": "a symbolic link out of the folder (not followed)"})
                continue
            try:
                st = path.stat()
            except OSError as exc:
                skipped.append({"path": rel, "reason": f"cannot read it ({exc.strerror or exc})"})
                continue
            found.append(_File(rel, st.st_size, st.st_mtime_ns, path))
    found.sort(key=lambda f: f.path)
    return found, skipped


def _prepare(preprocessing: Preprocessing, pixels: Tensor, name: str) -> Tensor:
    """One (3, H, W) uint8 image -> the model's input, as every indexed image and every query is made."""
    size = preprocessing.image_size
    if preprocessing.resize == "none" and tuple(pixels.shape[-2:]) != (size, size):
        h, w = pixels.shape[-2:]
        raise DatasetError(f"{name} is {w}x{h} pixels, but this model takes {size}x{size} images as they are "
                           "(its preprocessing does not resize)")
    return preprocessing(pixels, name=name)


def _reason(exc: Exception, path: Path) -> str:
    """Why a file could not be read, short, without its path (the index lists it beside its path)."""
    if isinstance(exc, UnreadableImage):
        return "it was removed while indexing" if exc.missing else f"cannot decode it ({exc.reason})"
    text = str(exc).strip()
    if isinstance(exc, DatasetError):  # _prepare's: "image PATH is WxH pixels, but ..."
        return text.replace(f"image {path} is ", "it is ")
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


class _Images(torch.utils.data.Dataset):
    """Item i: (file i preprocessed, i), or (why it could not be read, i): unreadable files never stop a build."""

    def __init__(self, paths: list[Path], preprocessing: Preprocessing):
        self.paths, self.preprocessing = paths, preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor | str, int]:
        path = self.paths[i]
        try:
            return _prepare(self.preprocessing, read_image(path), f"image {path}"), i
        except Exception as exc:  # noqa: BLE001 (anything a file can make Pillow or torchvision raise)
            return _reason(exc, path), i


def _collate(items: list[tuple[Tensor | str, int]]) -> tuple[Tensor | None, list[int], list[tuple[int, str]]]:
    good = [(x, i) for x, i in items if isinstance(x, Tensor)]
    bad = [(i, x) for x, i in items if not isinstance(x, Tensor)]
    return (torch.stack([x for x, _ in good]) if good else None), [i for _, i in good], bad


def _embed(model: ComposedRetrievalModel, preprocessing: Preprocessing, todo: list[_File], batch_size: int,
           num_workers: int, device: torch.device, progress: bool) -> tuple[Tensor, Tensor, dict[int, str], float, bool]:
    """(M, D) unit embeddings of the files of ``todo`` that were read, in order, which of ``todo`` they are (a bool
    mask), {position in todo: reason} for the unreadable ones, the seconds taken, and whether Ctrl-C stopped it (then
    the files after the last whole batch are in neither)."""
    dim = model.spec.embed_dim
    if not todo:
        return torch.empty(0, dim), torch.zeros(0, dtype=torch.bool), {}, 0.0, False
    loader = torch.utils.data.DataLoader(
        _Images([f.absolute for f in todo], preprocessing), batch_size=batch_size, shuffle=False,
        num_workers=min(num_workers, len(todo)), collate_fn=_collate, pin_memory=device.type == "cuda",
        generator=torch.Generator())
    out = torch.empty(len(todo), dim)
    ok = torch.zeros(len(todo), dtype=torch.bool)
    failures: dict[int, str] = {}
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    interrupted = False
    try:
        with CountProgress("index", len(todo), progress, unit="img", stderr=True) as bar, torch.no_grad():
            for images, rows, bad in loader:
                embedded = None
                if images is not None:
                    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    embedded = F.normalize(model.embed_images(images).float(), dim=-1).cpu()
                failures.update(bad)  # a batch counts whole or not at all
                if embedded is not None:
                    out[rows] = embedded
                    ok[rows] = True
                bar.advance(len(rows) + len(bad))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        model.train(was_training)
    return out[ok], ok, failures, time.perf_counter() - start, interrupted


def _query_pixels(image: Any) -> tuple[Tensor, str]:
    """A query image (a path, a PIL image, a (3, H, W) uint8 tensor) -> (its pixels, a description)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, remedy="give a JPEG, PNG or WebP image"), str(image)
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            raise OptionError(f"a query image tensor must be (3, H, W) uint8 RGB, not {tuple(image.shape)} {image.dtype}")
        return image.cpu(), "a tensor"
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover (Pillow is a dependency)
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        from torchvision.transforms.v2.functional import pil_to_tensor

        return pil_to_tensor(image.convert("RGB")), "an uploaded image"
    raise OptionError(f"a query image is a path, a PIL image or a (3, H, W) uint8 tensor, not {type(image).__name__}")


def _read_index_json(directory: Path, remedy: str = _REBUILD) -> dict[str, Any]:
    """index.json of ``directory``, checked field by field; anything wrong is one line naming the file (and ``remedy``)."""
    path = directory / INDEX_FILE
    if not path.is_file():
        if not directory.exists():
            raise ComposeRetrievalError(f"no index at {directory} (the folder does not exist); {remedy}")
        raise ComposeRetrievalError(f"{directory} holds no index ({INDEX_FILE} is missing); {remedy}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ComposeRetrievalError(f"{path} is not a readable index ({str(exc)[:120]}); {remedy}") from None

    def bad(what: str) -> ComposeRetrievalError:
        return ComposeRetrievalError(f"{path} is not a valid index ({what}); {remedy}")

    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise bad("it is not a compose-retrieval index")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("no format_version")
    if version > INDEX_FORMAT_VERSION:
        raise ComposeRetrievalError(f"{path} has index format {version}, newer than this version reads "
                                    f"({INDEX_FORMAT_VERSION}); upgrade compose-retrieval")
    identity = meta.get("model")
    if not (isinstance(identity, dict) and isinstance(identity.get("path"), str) and isinstance(identity.get("sha256"), str)
            and (identity.get("name") is None or isinstance(identity.get("name"), str))):
        raise bad("its model is not {name, path, sha256}")
    checks = {
        "build_id": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{16}", v),
        "folder": lambda v: isinstance(v, str) and os.path.isabs(v),
        "backend": lambda v: isinstance(v, str),
        "backend_options": lambda v: isinstance(v, dict),
        "backend_dir": lambda v: v is None or (isinstance(v, str) and _SEARCH_DIR.fullmatch(v)),
        "embed_dim": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "include": lambda v: v is None or (isinstance(v, list) and all(isinstance(p, str) for p in v)),
        "files": lambda v: isinstance(v, list) and all(_valid_entry(f, ("path", "size", "mtime_ns")) for f in v),
        "skipped": lambda v: isinstance(v, list) and all(_valid_entry(s, ("path", "reason")) for s in v),
    }
    for key, check in checks.items():
        if key not in meta or not check(meta[key]):
            raise bad(f"its {key!r} is missing or malformed")
    paths = [f["path"] for f in meta["files"]]
    if len(set(paths)) != len(paths) or not all(_safe_relative(p) for p in paths):
        raise bad("its files are not distinct paths inside the folder")
    if not all(p.lower().endswith(INDEX_SUFFIXES) for p in paths):  # an index holds images, nothing else of the folder
        raise bad(f"its files are not all images ({' '.join(INDEX_SUFFIXES)})")
    if meta.get("count", len(paths)) != len(paths):
        raise bad("its count is not the number of its files")
    return meta


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a value an index holds")


def _valid_entry(entry: Any, keys: tuple[str, ...]) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return False
    for key in keys[1:]:
        value = entry.get(key)
        if key == "reason":
            if not isinstance(value, str):
                return False
        elif isinstance(value, bool) or not isinstance(value, int):
            return False
    return True


def _safe_relative(path: str) -> bool:
    """A relative posix path with no '..', '.', empty or absolute part: it stays inside the folder it is joined to."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and "\\" not in path and "\x00" not in path \
        and all(p not in ("", ".", "..") for p in parts)


def _read_embeddings(path: Path, meta: dict[str, Any]) -> Tensor:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ComposeRetrievalError(f"{path} is missing; {_REBUILD}")
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("build_id")
            keys = list(f.keys())
            if keys != ["embeddings"]:
                raise ComposeRetrievalError(f"{path} does not hold one tensor 'embeddings'; {_REBUILD}")
            embeddings = f.get_tensor("embeddings")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ComposeRetrievalError(f"{path} is not a readable safetensors file ({str(exc)[:120]}); {_REBUILD}") from None
    if stored != meta["build_id"]:
        raise ComposeRetrievalError(f"{path} is not the one {INDEX_FILE} was written with (an interrupted build?); {_REBUILD}")
    count, dim = len(meta["files"]), meta["embed_dim"]
    if embeddings.dtype != torch.float32 or tuple(embeddings.shape) != (count, dim):
        raise ComposeRetrievalError(f"{path} holds {embeddings.dtype} {tuple(embeddings.shape)}, not float32 "
                                    f"({count}, {dim}) as {INDEX_FILE} says; {_REBUILD}")
    if not bool(torch.isfinite(embeddings).all()):
        raise ComposeRetrievalError(f"{path} holds non-finite values; {_REBUILD}")
    return embeddings


def _previous_build(out: Path, identity: dict[str, Any], root: Path) -> dict[str, Any] | None:
    """What ``out`` holds already: None (nothing, or an empty folder), or the previous build of the same model and
    folder (its embeddings None when they cannot be used: every file is then read again). Another model or another
    folder is refused: an index never mixes embeddings of two models."""
    if not out.is_dir():
        return None
    if not (out / INDEX_FILE).exists():
        ours = {EMBEDDINGS_FILE}
        foreign = [p.name for p in out.iterdir()
                   if p.name not in ours and not _SEARCH_DIR.fullmatch(p.name) and not p.name.startswith(".")]
        if foreign:
            raise ComposeRetrievalError(f"{out} is not empty and holds no index ({foreign[0]!r}, ...); give a new or "
                                        "empty folder for the index")
        return None
    meta = _read_index_json(out, f"delete {out} (or give a new --out) to build the index again")
    old = meta["model"]
    if old["sha256"] != identity["sha256"]:
        was = old["name"] or old["path"]
        now = identity["name"] or identity["path"]
        raise ComposeRetrievalError(
            f"{out} holds an index built with another model ({was}, sha256 {old['sha256'][:12]}...; this is {now}, "
            f"sha256 {identity['sha256'][:12]}...): give a new --out, or delete {out} to index with this model")
    if os.path.realpath(meta["folder"]) != str(root):
        raise ComposeRetrievalError(f"{out} holds the index of another folder ({meta['folder']}); give a new --out, "
                                    f"or delete {out} to index {root}")
    try:
        meta["embeddings"] = _read_embeddings(out / EMBEDDINGS_FILE, meta)
    except ComposeRetrievalError:  # an interrupted or damaged build: same model, so read every file again
        meta["embeddings"] = None
    return meta


def _recorded_checkpoint(directory: Path, identity: dict[str, Any], override: str | os.PathLike | None) -> Path:
    """The checkpoint file of the model an index was built with, checked against its recorded sha256."""
    recorded = identity["sha256"]
    hint = ("pass model= (Python) or --model (the CLI) with the checkpoint the index was built with "
            f"(sha256 {recorded[:12]}...)")
    if override is not None:
        path = resolve(override)
        digest = sha256_of(path)
        if digest != recorded:
            raise CheckpointError(f"{path} is not the model the index in {directory} was built with (sha256 "
                                  f"{digest[:12]}..., not {recorded[:12]}...); give that checkpoint, or build a new index")
        return path
    if identity["name"] is not None:
        try:
            path = resolve(identity["name"])
        except ComposeRetrievalError as exc:
            raise CheckpointError(f"the index in {directory} was built with {identity['name']!r}, which cannot be "
                                  f"loaded here ({str(exc)}); {hint}") from None
    else:
        path = Path(identity["path"])
        if not path.is_file():
            raise CheckpointError(f"the index in {directory} was built with {path}, which is gone; {hint}")
    if sha256_of(path) != recorded:
        raise CheckpointError(f"{path} has changed since the index in {directory} was built with it; {hint}")
    return path
