"""Top-k inner-product search over unit vectors: exact with torch, or a FAISS index.

Backends (``SEARCH_BACKENDS``):

- ``exact``: torch, through :func:`compose_retrieval.ranking.top_k` (chunked, bounded
  memory, exact; ties rank the lower id first). Nothing to build or save.
- ``flat``: ``faiss.IndexFlatIP``, exact as well (ties in FAISS's order).
- ``ivf``: ``faiss.IndexIVFFlat`` with the inner-product metric, approximate. Options
  ``nlist`` (lists, k-means trained on the vectors; default 4 sqrt(N), but at most N / 39
  so that every list has the 39 training points FAISS asks for, and at least 1) and
  ``nprobe`` (lists searched per query, default 16, at most nlist).
- ``hnsw``: ``faiss.IndexHNSWFlat`` with the inner-product metric, approximate. Options
  ``m`` (links per node, default 32), ``ef_construction`` (default 80) and ``ef_search``
  (default 64).

The approximate backends trade recall for speed: random vectors, with no cluster
structure, are their hardest case (benchmarks/RESULTS.md, "Vector search"). Every
backend returns the scores as inner products of the query with the returned vectors.
FAISS runs with its default number of OpenMP threads (``faiss.omp_get_max_threads()``,
usually one per core); a single query runs on one thread in the IVF and HNSW backends.

``pip install "compose-retrieval[faiss]"`` installs FAISS; the ``exact`` backend needs only torch.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import Tensor

from .checkpoint import atomic_write
from .errors import ComposeRetrievalError, OptionError
from .options import Range, check_value, describe_type
from .ranking import top_k

__all__ = ["SEARCH_BACKENDS", "VectorSearch", "VECTORS_FILE", "check_backend"]

SEARCH_BACKENDS = ("exact", "flat", "ivf", "hnsw")

VECTORS_FILE = "vectors.faiss"

# FAISS warns when k-means gets fewer training points than this per centroid
_MIN_POINTS_PER_LIST = 39
# k-means samples at most this many points per list (FAISS's own cap is 256): at 1M vectors and 4,000 lists it
# trains on 256k points, not all 1M; at 100k random vectors recall@10 was the same as with every point (0.070 against
# 0.073 at nprobe 16, 0.195 against 0.190 at 64; 1.000 for both on clustered vectors)
_MAX_POINTS_PER_LIST = 64

# name -> (annotation, default); None: computed from the vectors
_OPTIONS: dict[str, dict[str, tuple[Any, Any]]] = {
    "exact": {},
    "flat": {},
    "ivf": {
        "nlist": (Annotated[int, Range(1, 1 << 24)], None),
        "nprobe": (Annotated[int, Range(1, 1 << 24)], 16),
    },
    "hnsw": {
        "m": (Annotated[int, Range(2, 256)], 32),
        "ef_construction": (Annotated[int, Range(1, 1 << 16)], 80),
        "ef_search": (Annotated[int, Range(1, 1 << 16)], 64),
    },
}


_SEARCH_TIME = ("nprobe", "ef_search")  # options that searching reads; the others shape the built index


def _check_backend(backend: Any) -> str:
    if not isinstance(backend, str) or backend not in SEARCH_BACKENDS:
        close = difflib.get_close_matches(str(backend), SEARCH_BACKENDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"unknown vector search backend {backend!r}.{hint} Available: {', '.join(SEARCH_BACKENDS)}.")
    return backend


def _check_options(backend: str, options: dict[str, Any]) -> None:
    declared = _OPTIONS[backend]
    owner = f"vector search backend {backend!r}"
    for key, value in options.items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1) or [n for n in declared if n.startswith(key)]
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            listing = ", ".join(f"{n} ({describe_type(a)})" for n, (a, _) in declared.items()) or "none"
            raise OptionError(f"{owner} has no option {key!r}.{hint} Its options: {listing}.")
        check_value(owner, key, value, declared[key][0])


def check_backend(backend: str, options: dict[str, Any] | None = None) -> None:
    """Raise the one-line error that ``VectorSearch(vectors, backend, **options)`` would raise for an unknown backend
    or option, a value out of range or FAISS missing, without building anything (nlist against the number of
    vectors is checked when building)."""
    _check_options(_check_backend(backend), dict(options or {}))
    if backend != "exact":
        _import_faiss(backend)


def _import_faiss(backend: str):
    try:
        import faiss
    except ImportError:
        raise ComposeRetrievalError(
            f'the vector search backend {backend!r} needs FAISS: pip install "compose-retrieval[faiss]"'
            " (or use the exact backend)"
        ) from None
    return faiss


def _check_vectors(vectors: Any) -> Tensor:
    if not isinstance(vectors, Tensor) or vectors.dim() != 2 or not vectors.is_floating_point():
        shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise OptionError(f"vector search: the vectors must be a (N, D) float tensor, not {shape}")
    return vectors


def _numpy(t: Tensor):
    import numpy as np

    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def _default_nlist(size: int) -> int:
    """The IVF lists for ``size`` vectors: 4 sqrt(N), at most N / 39 (FAISS's minimum of training points per
    list), at least 1."""
    return max(1, min(round(4 * math.sqrt(size)), size // _MIN_POINTS_PER_LIST))


class VectorSearch:
    """Top-k inner-product search over unit vectors. exact: torch (ranking.top_k, chunked, bounded memory);
    flat: faiss.IndexFlatIP; ivf: faiss.IndexIVFFlat (inner product; options nlist, nprobe); hnsw: faiss.IndexHNSWFlat
    (inner product; options m, ef_construction, ef_search).

    ``options`` holds the resolved options (defaults filled in), JSON-serialisable: what
    :meth:`load` takes back. The vectors stay referenced (for the exact backend's search and
    for every backend's scores); the FAISS backends hold their own copy in the index.
    """

    backend: str
    options: dict

    def __init__(self, vectors: Tensor, backend: str = "exact", **options: Any) -> None:
        self.backend = _check_backend(backend)
        _check_options(self.backend, options)
        self.vectors = _check_vectors(vectors)
        self.options = self._resolve(options)
        self.index = self._build() if self.backend != "exact" else None

    # -- building -------------------------------------------------------------------------------------------------

    def _resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        size = self.vectors.shape[0]
        resolved = {k: given.get(k, default) for k, (_, default) in _OPTIONS[self.backend].items()}
        if self.backend == "ivf":
            if size == 0:
                raise ComposeRetrievalError("the vector search backend 'ivf' needs vectors to train on; this index has none")
            if resolved["nlist"] is None:
                resolved["nlist"] = _default_nlist(size)
            elif resolved["nlist"] > size:
                raise OptionError(f"vector search backend 'ivf': option nlist={resolved['nlist']} is more than the "
                                  f"{size} vectors to train it on")
            resolved["nprobe"] = min(resolved["nprobe"], resolved["nlist"])
        return resolved

    def _build(self):
        faiss = _import_faiss(self.backend)
        dim = self.vectors.shape[1]
        data = _numpy(self.vectors)
        opts = self.options
        if self.backend == "flat":
            index = faiss.IndexFlatIP(dim)
        elif self.backend == "ivf":
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, opts["nlist"], faiss.METRIC_INNER_PRODUCT)
            index.cp.max_points_per_centroid = _MAX_POINTS_PER_LIST
            index.cp.min_points_per_centroid = 1  # small N: _default_nlist keeps 39 a list; a user's nlist may not
            index.train(data)
        else:
            index = faiss.IndexHNSWFlat(dim, opts["m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = opts["ef_construction"]
        if len(data):
            index.add(data)
        self._apply_search_options(index)
        return index

    def set_search_options(self, **options: Any) -> None:
        """Change the options that only searching reads (ivf: nprobe; hnsw: ef_search) without rebuilding:
        more lists probed or a wider beam find more of the true top k, more slowly."""
        _check_options(self.backend, options)
        fixed = [k for k in options if k not in _SEARCH_TIME]
        if fixed:
            raise OptionError(f"vector search backend {self.backend!r}: option {fixed[0]!r} is set when the index is "
                              f"built, not at search time (rebuild the index to change it)")
        self.options.update(options)
        if self.backend == "ivf":
            self.options["nprobe"] = min(self.options["nprobe"], self.options["nlist"])
        self._apply_search_options(self.index)

    def _apply_search_options(self, index) -> None:
        if self.backend == "ivf":
            index.nprobe = self.options["nprobe"]
        elif self.backend == "hnsw":
            index.hnsw.efSearch = self.options["ef_search"]

    # -- searching ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(scores (Q, k) float32, ids (Q, k) int64), best first.

        ``exclude[i]`` (>= 0) is an id never returned for query i (-1: none). k larger than the
        vectors (less the excluded one) returns them all. Where an approximate backend finds fewer
        than k, the ids are -1 and the scores -inf.
        """
        if not isinstance(queries, Tensor) or queries.dim() != 2:
            shape = tuple(queries.shape) if isinstance(queries, Tensor) else type(queries).__name__
            raise OptionError(f"vector search: queries must be a (Q, D) tensor, not {shape}")
        if self.backend == "exact":
            ids = top_k(queries.to(self.vectors.device), self.vectors, k, exclude)
        else:  # ranking's FAISS path: searches k + 1 and drops the excluded id
            ids = top_k(queries, self.index, k, exclude, backend="faiss")
        return self._scores(queries, ids), ids

    def _scores(self, queries: Tensor, ids: Tensor) -> Tensor:
        """The inner product of each query with each returned vector; -inf where the id is -1."""
        num, k = ids.shape
        scores = torch.full((num, k), float("-inf"), dtype=torch.float32)
        if num == 0 or k == 0:
            return scores
        device = self.vectors.device
        q = queries.to(device=device, dtype=torch.float32)
        step = max(1, (1 << 22) // max(1, k * self.vectors.shape[1]))  # at most ~4M gathered floats at a time
        for start in range(0, num, step):
            chunk = ids[start : start + step].to(device)
            gathered = self.vectors[chunk.clamp(min=0)].float()  # (c, k, D)
            s = torch.bmm(gathered, q[start : start + step, :, None]).squeeze(2)
            scores[start : start + step] = s.masked_fill(chunk < 0, float("-inf")).cpu()
        return scores

    # -- saving ---------------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write the FAISS index to ``directory/vectors.faiss`` whole or not at all; the exact backend writes nothing."""
        if self.index is None:
            return
        faiss = _import_faiss(self.backend)
        index = self.index
        atomic_write(Path(directory) / VECTORS_FILE, lambda tmp: faiss.write_index(index, str(tmp)))

    @classmethod
    def load(cls, directory: str | os.PathLike, vectors: Tensor, backend: str, options: dict) -> "VectorSearch":
        """The search saved in ``directory`` for ``vectors`` (exact: nothing is read). A missing or unreadable
        ``vectors.faiss``, or one that does not match the vectors or the options, is a one-line error."""
        backend = _check_backend(backend)
        options = dict(options or {})
        _check_options(backend, {k: v for k, v in options.items() if not (k == "nlist" and v is None)})
        if backend == "exact":
            return cls(vectors, backend, **options)
        self = cls.__new__(cls)
        self.backend, self.vectors = backend, _check_vectors(vectors)
        faiss = _import_faiss(backend)
        path = Path(directory) / VECTORS_FILE
        rebuild = "rebuild the index (compose-retrieval index ...)"
        if not path.is_file():
            raise ComposeRetrievalError(f"{path} is missing: {rebuild}")
        try:
            index = faiss.read_index(str(path))
        except Exception as exc:  # FAISS raises RuntimeError with a multi-line C++ trace
            lines = str(exc).strip().splitlines() or ["unreadable"]
            reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", lines[-1])  # drop the C++ function and line
            raise ComposeRetrievalError(f"{path} cannot be read ({reason[:300]}): {rebuild}") from None
        expected = {"flat": faiss.IndexFlatIP, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}[backend]
        problem = None
        if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            problem = f"is a {type(index).__name__}, not the {backend} inner-product index"
        elif index.ntotal != vectors.shape[0] or index.d != vectors.shape[1]:
            problem = f"holds {index.ntotal} vectors of {index.d} dimensions, not {vectors.shape[0]} of {vectors.shape[1]}"
        elif backend == "ivf" and options.get("nlist") not in (None, index.nlist):
            problem = f"has {index.nlist} lists, not nlist={options['nlist']}"
        elif backend == "hnsw" and "m" in options and options["m"] * 2 != index.hnsw.nb_neighbors(0):
            problem = f"has m={index.hnsw.nb_neighbors(0) // 2}, not m={options['m']}"
        if problem:
            raise ComposeRetrievalError(f"{path} {problem}: {rebuild}")
        resolved = {k: options.get(k, default) for k, (_, default) in _OPTIONS[backend].items()}
        if backend == "ivf":
            resolved["nlist"] = index.nlist
            resolved["nprobe"] = min(resolved["nprobe"], index.nlist)
        elif backend == "hnsw" and "m" not in options:
            resolved["m"] = index.hnsw.nb_neighbors(0) // 2
        self.options, self.index = resolved, index
        self._apply_search_options(index)
        return self

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"VectorSearch({len(self)} x {self.vectors.shape[1]}, {self.backend}{', ' + opts if opts else ''})"
