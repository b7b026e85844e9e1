"""The dataset plugin contract."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .preprocessing import Preprocessing
from .protocol import RetrievalProtocol

__all__ = ["Dataset"]


class Dataset:
    """A dataset plugin: training triplets and test protocols.

    ``train_set(seed, protocol)`` is a torch Dataset whose items are dicts
    ``{"source": Tensor, "text": str, "target": Tensor}`` (a dataset that draws its
    pairs at random draws them from ``seed``, the run's seed; ``protocol`` is the one
    the run is tested on, for a dataset whose training follows it: css's 2d-to-3d
    trains from flat drawings to renders); ``train_texts()`` lists
    every training text (for fitting a vocabulary); ``protocols()`` names the test
    protocols and ``protocol(name)`` builds one. ``default_loss`` is the loss the
    paper used on it (None: the recipe's). ``mods_per_source`` is how many different texts of one source a
    training batch holds by default (1: pairs drawn independently; 2: google/tirg's CSS
    and MIT-States batches); above 1 the training set must list a source's
    modifications (``mods_of(source) -> {text: [targets]}``, as ``Triplets`` and
    ``SampledPairs`` do).
    """

    description: ClassVar[str] = ""
    default_loss: ClassVar[str | None] = None
    skipped_images: int = 0
    """How many unreadable images the dataset skipped (``skip_unreadable``); a run records it in its metrics."""
    mods_per_source: ClassVar[int] = 1
    preprocessing: Preprocessing

    def config(self) -> dict[str, Any]:
        return dict(getattr(self, "_options", {}))

    def train_set(self, seed: int = 0, protocol: str | None = None) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def train_texts(self) -> list[str]:
        raise NotImplementedError

    def protocols(self) -> list[str]:
        raise NotImplementedError

    def protocol(self, name: str | None = None) -> RetrievalProtocol:
        raise NotImplementedError
