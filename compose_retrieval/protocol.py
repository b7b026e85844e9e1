"""A test protocol: the gallery, the queries, and what counts as a hit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import DatasetError

__all__ = ["RetrievalProtocol"]


@dataclass
class RetrievalProtocol:
    """A test protocol: the gallery, the queries, and what counts as a hit.

    Query i is ``query_images[query_sources[i]]`` composed with ``query_texts[i]``.
    Gallery image j is a hit for query i under view v when
    ``gallery_labels[v][j] == query_labels[v][i]``; the gallery image
    ``query_exclude[i]`` (the query's own source, or -1 for none) is never ranked.
    Every view gives its own recall@K (the view "label" is the main one; MIT-States
    adds adjective-only and noun-only views, for example).
    """

    name: str
    gallery: torch.utils.data.Dataset
    query_images: torch.utils.data.Dataset
    query_sources: Tensor
    query_texts: list[str]
    query_exclude: Tensor
    gallery_labels: dict[str, Tensor]
    query_labels: dict[str, Tensor]
    ks: tuple[int, ...] = (1, 5, 10, 50, 100)

    def __post_init__(self) -> None:
        n = len(self.query_texts)
        if n == 0:
            raise DatasetError(f"protocol {self.name!r} has no queries")
        if len(self.query_sources) != n or len(self.query_exclude) != n:
            raise DatasetError(f"protocol {self.name!r}: query fields differ in length")
        for view, labels in self.query_labels.items():
            if len(labels) != n or len(self.gallery_labels[view]) != len(self.gallery):
                raise DatasetError(f"protocol {self.name!r}: labels of view {view!r} do not match")
