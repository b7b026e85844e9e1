"""Evaluation: embed the gallery once, compose the queries in batches, rank them (ranking.py), score by the protocol."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from . import registry
from .checkpoint import check_loaded_options, install_hint, load_checkpoint
from .errors import CheckpointError, OptionError, UnknownNameError
from .protocol import RetrievalProtocol
from .model import ComposedRetrievalModel
from .options import Range, check_value
from .ranking import BACKENDS, top_k

__all__ = ["embed_gallery", "compose_queries", "recall_at_k", "evaluate", "evaluate_checkpoint", "load_with_dataset"]


def _loader(images, indices: Tensor | Sequence[int] | None, batch_size: int, num_workers: int,
            device: torch.device) -> DataLoader:
    """Batches of ``images[i]`` for i in ``indices`` (all, in order, when None), read by ``num_workers`` processes
    (0: in this one) so that decoding runs in parallel; pinned memory when they go to a GPU."""
    data = images if indices is None else Subset(images, indices.tolist() if isinstance(indices, Tensor) else list(indices))
    # a generator of its own: making the loader's worker seeds must not draw from the global random state, or an
    # evaluation during training would change the dropout masks of the steps after it
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda",
                      generator=torch.Generator())


def _to_device(images: Tensor, device: torch.device) -> Tensor:
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def embed_gallery(
    model: ComposedRetrievalModel, gallery, batch_size: int = 256, device: torch.device | str = "cpu", num_workers: int = 0
) -> Tensor:
    """(N, D) unit-length embeddings of every gallery image, in gallery order."""
    device = torch.device(device)
    out = []
    for images in _loader(gallery, None, batch_size, num_workers, device):
        out.append(F.normalize(model.embed_images(_to_device(images, device)).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def compose_queries(
    model: ComposedRetrievalModel,
    protocol: RetrievalProtocol,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Tensor:
    """(Q, D) unit-length composed queries, in query order."""
    device = torch.device(device)
    out = []
    start = 0
    for images in _loader(protocol.query_images, protocol.query_sources, batch_size, num_workers, device):
        texts = protocol.query_texts[start : start + len(images)]
        out.append(F.normalize(model.compose(_to_device(images, device), texts).float(), dim=-1))
        start += len(images)
    return torch.cat(out)


def recall_at_k(ranked: Tensor, gallery_labels: Tensor, query_labels: Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """Fraction of queries with a hit (same label) among the first K results, for each K."""
    hits = gallery_labels[ranked] == query_labels[:, None]
    return {k: hits[:, :k].any(1).float().mean().item() for k in ks}


def evaluate(
    model: ComposedRetrievalModel,
    protocol: RetrievalProtocol,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    ranking_backend: str = "torch",
) -> dict[str, Any]:
    """Recall@K of ``model`` under ``protocol``; keys "recall@K" (and "<view>_recall@K" for other views).

    ``num_workers`` processes read (decode and preprocess) the images while the model runs; 0 reads them here.
    ``ranking_backend``: "torch" (exact, in chunks) or "faiss" (an exact FAISS index; see ``ranking.top_k``).
    """
    check_value("evaluate", "batch_size", batch_size, Annotated[int, Range(1, None)])
    check_value("evaluate", "num_workers", num_workers, Annotated[int, Range(0, None)])
    check_value("evaluate", "ranking_backend", ranking_backend, Literal[BACKENDS])
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        gallery = embed_gallery(model, protocol.gallery, batch_size, device, num_workers)
        queries = compose_queries(model, protocol, batch_size, device, num_workers)
    finally:
        model.train(was_training)
    ranked = top_k(queries, gallery, max(protocol.ks), protocol.query_exclude, backend=ranking_backend)
    metrics: dict[str, Any] = {"protocol": protocol.name, "queries": len(protocol.query_texts), "gallery": len(protocol.gallery)}
    for view, labels in protocol.query_labels.items():
        prefix = "" if view == "label" else f"{view}_"
        for k, value in recall_at_k(ranked, protocol.gallery_labels[view], labels, protocol.ks).items():
            metrics[f"{prefix}recall@{k}"] = value
    return metrics


def evaluate_checkpoint(
    path: str | Path,
    *,
    data_root: str | None = None,
    protocol: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    num_workers: int = 0,
    ranking_backend: str = "torch",
) -> dict[str, Any]:
    """Evaluate a checkpoint (a file, a run directory or a zoo name) on the dataset recorded in it.

    ``num_workers`` and ``ranking_backend``: as in ``evaluate``. The data come from ``data_root``
    (see ``load_with_dataset``).
    """
    model, meta, dataset, device = load_with_dataset(path, data_root=data_root, device=device, doing="evaluate")
    recorded = (meta.get("metrics") or {}).get("protocol")
    protocol = protocol or (recorded if isinstance(recorded, str) else None)
    return evaluate(model, dataset.protocol(protocol), batch_size=batch_size, device=device, num_workers=num_workers,
                    ranking_backend=ranking_backend)


def load_with_dataset(
    path: str | Path, *, data_root: str | None = None, device: str = "auto", doing: str = "evaluate"
) -> tuple[ComposedRetrievalModel, dict[str, Any], Any, torch.device]:
    """A checkpoint (a file, a run directory or a zoo name) on ``device``, its metadata, the dataset it was trained
    on rebuilt with its recorded options and fed with the checkpoint's preprocessing, and the device.

    The data come from ``data_root``, the folder the caller gives: a checkpoint names the dataset and its options but
    never chooses the files that are read, so a checkpoint that recorded a data root needs it given again (the error
    says which it was). ``doing`` ("evaluate", "classify") words the errors.
    """
    from .devices import resolve_device
    from .zoo import resolve

    device = resolve_device(device)
    path = resolve(path)
    model, meta = load_checkpoint(path, map_location=device)
    model.place(device)
    recipe = meta.get("recipe") or {}
    name = recipe.get("dataset")
    if not isinstance(name, str):
        raise CheckpointError(f"{path} records no dataset; it cannot {doing} without one")
    recorded_root = recipe.get("data_root")
    if data_root is None and recorded_root is not None:
        raise CheckpointError(
            f"{path} was trained on {name!r} from files in {str(recorded_root)[:200]!r}; a checkpoint never "
            "chooses the files that are read: give --data-root DIR (that folder, if you trust it)"
        )
    options = recipe.get("dataset_options") or {}
    if not isinstance(options, dict):
        raise CheckpointError(f"{path} records dataset options that are not a mapping")
    options = dict(options)
    try:
        registry.get_entry("dataset", name)
    except UnknownNameError as exc:
        raise CheckpointError(f"{path} was trained on the dataset {name[:100]!r}, which no installed plugin "
                              f"provides; {install_hint(meta, ('dataset',), exc)}") from None
    accepted = registry.accepted_options("dataset", name)
    for key in [k for k in options if accepted is not None and k not in accepted]:
        warnings.warn(f"{path} records the dataset option {key}={options.pop(key)!r}, which {name!r} no longer takes; "
                      f"continuing without it")
    try:
        check_loaded_options("dataset", name, options)
    except OptionError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    dataset = registry.create("dataset", name, data_root=data_root, **options)
    if model.preprocessing is not None:  # feed the images as the model was trained on them
        dataset.preprocessing = model.preprocessing
    return model, meta, dataset, device
