"""A test protocol: the gallery, the queries, and what counts as a hit."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .data import label_ids
from .errors import DatasetError

__all__ = ["RetrievalProtocol", "DEFAULT_KS"]

DEFAULT_KS = (1, 5, 10, 50, 100)
"""The K of recall@K that a protocol reports unless it says otherwise."""


@dataclass
class RetrievalProtocol:
    """A test protocol: the gallery, the queries, and what counts as a hit.

    Query i is ``query_images[query_sources[i]]`` composed with ``query_texts[i]``.
    Gallery image j is a hit for query i under view v when
    ``gallery_labels[v][j] == query_labels[v][i]``; the gallery image
    ``query_exclude[i]`` (the query's own source, or -1 for none) is never ranked.
    Every view gives its own recall@K (the view "label" is the main one; MIT-States
    adds adjective-only and noun-only views, for example).

    A dataset rarely fills these fields by hand: ``RetrievalProtocol.from_queries``
    builds them from a gallery, a label per gallery image and (source, text, target)
    queries.
    """

    name: str
    gallery: torch.utils.data.Dataset
    query_images: torch.utils.data.Dataset
    query_sources: Tensor
    query_texts: list[str]
    query_exclude: Tensor
    gallery_labels: dict[str, Tensor]
    query_labels: dict[str, Tensor]
    ks: tuple[int, ...] = DEFAULT_KS

    def __post_init__(self) -> None:
        n = len(self.query_texts)
        if n == 0:
            raise DatasetError(f"protocol {self.name!r} has no queries")
        if len(self.query_sources) != n or len(self.query_exclude) != n:
            raise DatasetError(f"protocol {self.name!r}: query fields differ in length")
        for view, labels in self.query_labels.items():
            if len(labels) != n or len(self.gallery_labels[view]) != len(self.gallery):
                raise DatasetError(f"protocol {self.name!r}: labels of view {view!r} do not match")

    @classmethod
    def from_queries(
        cls,
        name: str,
        gallery: torch.utils.data.Dataset,
        labels: Sequence[Hashable] | Mapping[str, Sequence[Hashable]],
        queries: Iterable[tuple[int, str, Any]],
        *,
        targets: Literal["label", "index"] = "label",
        query_images: torch.utils.data.Dataset | None = None,
        query_image_in_gallery: Sequence[int] | None = None,
        ks: tuple[int, ...] = DEFAULT_KS,
    ) -> "RetrievalProtocol":
        """A protocol from plain lists: the gallery, a label per gallery image, and the queries.

        ``gallery``: a torch Dataset whose item j is gallery image j, already
        preprocessed: a float tensor (3, S, S) made by the dataset's ``preprocessing``
        (``ImageFiles`` and ``TensorImages`` do that). ``labels``: one hashable label
        per gallery image (a string, a number, a path); a gallery image is a hit for a
        query when its label equals the query's target label, so images that show the
        same thing share a label, and a unique label per image (its path) makes only
        the listed target a hit. Several views, each scored as its own recall@K, are a
        mapping view -> labels with the main view named "label" (reported as
        ``recall@K``; view v as ``v_recall@K``).

        ``queries``: (source, text, target) per query, in the order the queries are
        scored. ``source`` is an index into ``query_images`` (default: the gallery
        itself, so the source is gallery image ``source``). ``target`` is, with
        ``targets="label"`` (default), the target's label (with views: a mapping
        view -> label, e.g. ``{"label": "red tomato", "adjective": "red", "noun":
        "tomato"}``), and with ``targets="index"``, the index of the target gallery
        image (its labels are the target's in every view). A target label that no
        gallery image has is allowed; that query can never hit.

        A query's own source image is never ranked, as it would trivially match.
        ``query_images`` may differ from the gallery: with ``query_image_in_gallery``
        None, it is taken to be indexed like the gallery (the same images, or the same
        scenes drawn another way, as css's 2d-to-3d drawings), so source i excludes
        gallery image i; otherwise ``query_image_in_gallery[j]`` is the gallery index of
        query image j, or -1 when it is not in the gallery (nothing is excluded).
        ``ks``: the K of recall@K.
        """
        by_view = isinstance(labels, Mapping)
        views = dict(labels) if by_view else {"label": labels}
        if "label" not in views:
            raise DatasetError(f"protocol {name!r}: labels has views {', '.join(map(repr, views))} but no main view 'label'")
        if targets not in ("label", "index"):
            raise DatasetError(f"protocol {name!r}: targets must be 'label' or 'index', not {targets!r}")
        for view, values in views.items():
            if len(values) != len(gallery):
                raise DatasetError(f"protocol {name!r}: view {view!r} has {len(values)} labels for {len(gallery)} gallery images")
        if query_images is None:
            query_images = gallery
        if query_image_in_gallery is not None and len(query_image_in_gallery) != len(query_images):
            raise DatasetError(f"protocol {name!r}: query_image_in_gallery has {len(query_image_in_gallery)} entries "
                               f"for {len(query_images)} query images")
        queries = list(queries)
        for i, (source, _, target) in enumerate(queries):
            if not 0 <= source < len(query_images):
                raise DatasetError(f"protocol {name!r}: query {i}'s source {source} is not an index of its {len(query_images)} query images")
            if targets == "index" and not 0 <= target < len(gallery):
                raise DatasetError(f"protocol {name!r}: query {i}'s target {target} is not an index of its {len(gallery)} gallery images")
            if targets == "label" and by_view and not (isinstance(target, Mapping) and set(views) <= set(target)):
                raise DatasetError(f"protocol {name!r}: query {i}'s target must map every view ({', '.join(views)}) to a label")
            if not isinstance(queries[i][1], str):
                raise DatasetError(f"protocol {name!r}: query {i}'s text is {type(queries[i][1]).__name__}, not a string")
        sources = torch.tensor([s for s, _, _ in queries], dtype=torch.long)
        if query_image_in_gallery is None:
            exclude = sources.clone()
        else:
            exclude = torch.tensor(list(query_image_in_gallery), dtype=torch.long)[sources]
        gallery_labels, query_labels = {}, {}
        for view, values in views.items():
            gallery_labels[view], vocabulary = label_ids(values)
            if targets == "index":
                query_labels[view] = gallery_labels[view][torch.tensor([t for _, _, t in queries], dtype=torch.long)]
            else:
                wanted = [t[view] if by_view else t for _, _, t in queries]
                query_labels[view], _ = label_ids(wanted, vocabulary)
        return cls(name=name, gallery=gallery, query_images=query_images, query_sources=sources,
                   query_texts=[text for _, text, _ in queries], query_exclude=exclude,
                   gallery_labels=gallery_labels, query_labels=query_labels, ks=tuple(ks))

