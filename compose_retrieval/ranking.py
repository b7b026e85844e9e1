"""Ranking: the k gallery items most similar to each query, exactly, in bounded memory.

The default backend is torch. It ranks ``chunk`` queries at a time: one matrix product
writes their similarities to every gallery item into a buffer allocated once, laid out
gallery-major ((gallery, chunk): MKL's faster layout for this product, 1.4x on the 2-core
machine of benchmarks/RESULTS.md), and a selection that reads each similarity twice picks
the k best without sorting or partially sorting whole rows:

1. the gallery is cut into blocks and each block's maximum taken (one pass);
2. the k-th largest of those maxima, tau, is a lower bound on the k-th best similarity
   (k blocks each hold an item at least tau), so every item of the top k is at least tau;
3. the items at least tau (about 1.2 k per query with 3 k blocks) are flagged in one
   comparison, found with ``nonzero`` (8 flags a word) and sorted, per query, by
   descending similarity and ascending gallery index.

The result is exactly the first k entries of a stable descending argsort of each row of
the similarities it computes (ties rank the lower gallery index first), on every device.
Peak extra memory is ``chunk x len(gallery)`` similarities plus as many one-byte flags and
a few ``chunk x 1.2 k`` candidate arrays: 5 bytes x 1024 x 29,789 = 152 MB at
Fashion200k's size (194 MiB measured, with the (Q, k) result).

``backend="faiss"`` (``pip install "compose-retrieval[faiss]"``) searches an exact
inner-product index (``faiss.IndexFlatIP``) with the same exclusion rule; ``gallery`` may
then also be a FAISS index built by the caller, for example one memory-mapped from disk
(``faiss.read_index(path, faiss.IO_FLAG_MMAP)``) for a gallery larger than memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import ComposeRetrievalError, OptionError

__all__ = ["BACKENDS", "top_k"]

BACKENDS = ("torch", "faiss")

# Blocks per k in step 1: more blocks make tau tighter (about -n ln(1 - k/n) candidates for n blocks,
# 1.22 k at n = 3 k) and step 2 dearer; 3 was the fastest at Fashion200k's size (benchmarks/RESULTS.md).
_BLOCKS_PER_K = 3


def top_k(
    queries: Tensor,
    gallery: Any,
    k: int,
    exclude: Tensor | None = None,
    chunk: int = 1024,
    *,
    backend: str = "torch",
) -> Tensor:
    """(Q, k) gallery indices ranked by inner product (cosine similarity for unit vectors), best first, on the CPU.

    ``exclude[i]`` (>= 0) is a gallery index never returned for query i (-1: none). k larger than
    the gallery (less one item when some query excludes one) returns every item. The torch backend ranks ``chunk``
    queries at a time, ties by the lower gallery index; ``backend="faiss"`` searches a
    ``faiss.IndexFlatIP`` (or ``gallery`` itself when it is a FAISS index; an approximate one may
    return -1 where it found fewer items), ties in FAISS's order.
    """
    if backend not in BACKENDS:
        raise OptionError(f"top_k: backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise OptionError(f"top_k: chunk={chunk!r} must be an int of at least 1")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise OptionError(f"top_k: k={k!r} must be an int of at least 0")
    if queries.dim() != 2:
        raise OptionError(f"top_k: queries must be a (Q, D) matrix, not of shape {tuple(queries.shape)}")
    if backend == "faiss":
        faiss = _import_faiss()
        if isinstance(gallery, faiss.Index):
            size, dim = gallery.ntotal, gallery.d
        else:
            size, dim = _check_gallery(gallery)
    else:
        size, dim = _check_gallery(gallery)
    if dim != queries.shape[1]:
        raise OptionError(f"top_k: queries have {queries.shape[1]} dimensions and the gallery {dim}")
    if exclude is not None:
        exclude = _check_exclude(exclude, queries.shape[0], size)
    if exclude is not None and not bool((exclude >= 0).any()):  # rows of -1 alone exclude nothing
        exclude = None
    k = max(0, min(k, size - (1 if exclude is not None else 0)))
    if queries.shape[0] == 0 or k == 0:
        return torch.empty(queries.shape[0], k, dtype=torch.long)
    if backend == "faiss":
        return _faiss_top_k(faiss, queries, gallery, k, exclude)
    return _torch_top_k(queries, gallery, k, exclude, chunk)


def _check_gallery(gallery: Any) -> tuple[int, int]:
    if not isinstance(gallery, Tensor) or gallery.dim() != 2:
        raise OptionError(f"top_k: the gallery must be a (N, D) tensor, not {type(gallery).__name__} "
                          f"{tuple(gallery.shape) if isinstance(gallery, Tensor) else ''}".rstrip())
    return gallery.shape[0], gallery.shape[1]


def _check_exclude(exclude: Tensor, num_queries: int, size: int) -> Tensor:
    if not isinstance(exclude, Tensor) or exclude.shape != (num_queries,) or exclude.is_floating_point() or exclude.dtype == torch.bool:
        raise OptionError(f"top_k: exclude must be a tensor of {num_queries} integer gallery indices (-1: none)")
    exclude = exclude.long()
    if num_queries and (int(exclude.min()) < -1 or int(exclude.max()) >= size):
        raise OptionError(f"top_k: exclude holds an index outside -1..{size - 1}")
    return exclude


def _torch_top_k(queries: Tensor, gallery: Tensor, k: int, exclude: Tensor | None, chunk: int) -> Tensor:
    dtype = torch.promote_types(torch.promote_types(queries.dtype, gallery.dtype), torch.float32)  # at least float32
    queries, gallery = queries.to(dtype), gallery.to(device=queries.device, dtype=dtype)
    num_queries, size = queries.shape[0], gallery.shape[0]
    block = max(2, size // (_BLOCKS_PER_K * k))
    blocks = -(-size // block)
    if blocks <= k:  # a gallery of at most ~2 k items: sort whole rows
        block, blocks = size, 1
    padded = blocks * block
    chunk = min(chunk, num_queries)
    # allocated once: a fresh buffer per chunk costs its page faults every time (see RESULTS.md)
    sims_store = torch.empty(padded * chunk, dtype=dtype, device=queries.device)
    flags_store = torch.empty(-(-padded * chunk // 8) * 8, dtype=torch.bool, device=queries.device) if blocks > 1 else None
    if exclude is not None:
        exclude = exclude.to(queries.device)
    out = torch.empty(num_queries, k, dtype=torch.long)
    for start in range(0, num_queries, chunk):
        q = queries[start : start + chunk]
        width = q.shape[0]
        sims = sims_store[: padded * width].view(padded, width)  # column j: query start + j
        torch.mm(gallery, q.T, out=sims[:size])
        sims[size:] = float("-inf")
        if exclude is not None:
            ex = exclude[start : start + width]
            cols = torch.nonzero(ex >= 0).squeeze(1)
            sims.view(-1).index_fill_(0, ex[cols] * width + cols, float("-inf"))
        ranked = None
        if flags_store is not None:
            ranked = _select(sims, k, block, flags_store[: -(-padded * width // 8) * 8])
        if ranked is None:  # a small gallery, or NaN similarities (no finite bound)
            ranked = torch.sort(sims[:size].T, dim=1, descending=True, stable=True).indices[:, :k]
        out[start : start + width] = ranked.cpu()
    return out


def _select(sims: Tensor, k: int, block: int, flags: Tensor) -> Tensor | None:
    """The (width, k) ranking of the columns of ``sims`` (padded to whole blocks of ``block`` rows), or None when a
    column has fewer than k candidates (NaN similarities). ``flags``: room for a bool per similarity, a multiple of 8."""
    padded, width = sims.shape
    size = padded * width
    maxima = sims.view(padded // block, block, width).amax(1)  # (blocks, width)
    tau = maxima.T.contiguous().topk(k, dim=1, sorted=False).values.amin(1)  # (width,): tau <= the k-th best
    torch.ge(sims, tau, out=flags[:size].view(padded, width))
    flags[size:] = False
    # nonzero over 8 flags a word scans 8 times fewer elements (the flags are sparse: ~1.2 k per column)
    words = flags.view(torch.int64)
    busy = torch.nonzero(words).squeeze(1)
    hits = torch.nonzero(words[busy].view(torch.bool).view(-1, 8))  # (word, byte) of every flag set
    flat = busy[hits[:, 0]] * 8 + hits[:, 1]  # ascending: gallery-major, so gallery order within each query
    query = flat % width
    counts = torch.bincount(query, minlength=width)
    if int(counts.min()) < k:
        return None
    flat = flat[torch.sort(query, stable=True).indices]  # grouped by query, gallery order kept
    values, items = sims.view(-1)[flat], torch.div(flat, width, rounding_mode="floor")
    most = int(counts.max())
    slot = torch.arange(most, device=sims.device)
    real = slot < counts[:, None]  # (width, most): query i's candidates, then padding
    slot = (slot + (torch.cumsum(counts, 0) - counts)[:, None]).clamp_(max=len(flat) - 1)
    values = values[slot].masked_fill_(~real, float("-inf"))
    # real candidates precede their row's -inf padding, and a stable sort keeps them ahead of it
    best = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return items[slot.gather(1, best)]


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ComposeRetrievalError('backend="faiss" needs FAISS: pip install "compose-retrieval[faiss]"') from None
    return faiss


def _faiss_top_k(faiss, queries: Tensor, gallery: Any, k: int, exclude: Tensor | None) -> Tensor:
    import numpy as np

    if isinstance(gallery, faiss.Index):
        index = gallery
    else:
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(np.ascontiguousarray(gallery.detach().cpu().float().numpy()))
    extra = 1 if exclude is not None else 0
    _, ids = index.search(np.ascontiguousarray(queries.detach().cpu().float().numpy()), k + extra)
    ids = torch.from_numpy(ids)
    if exclude is not None:  # drop the excluded item where it was found, else the (k+1)-th
        exclude = exclude.cpu()[:, None]
        drop = (ids == exclude) & (exclude >= 0)
        drop[~drop.any(1), -1] = True
        ids = ids[~drop].view(-1, k)
    return ids
