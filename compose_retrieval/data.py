"""Building blocks for dataset plugins: image sets, training-triplet sets, label ids.

An image set is a torch Dataset whose item i is image i *preprocessed*: a float tensor
(3, S, S), resized and normalised by a ``Preprocessing`` (what the engine feeds the
model, in training and in evaluation). ``ImageFiles`` decodes files; ``TensorImages``
holds images in memory. A training set is a torch Dataset of
``{"source": image, "text": str, "target": image}`` items: ``Triplets`` lists fixed
(source, text, target) rows, ``SampledPairs`` draws them by a rule from the run's
seed. ``label_ids`` turns labels into the integer ids a ``RetrievalProtocol`` holds
(``RetrievalProtocol.from_queries`` calls it for you).

Build image sets inside ``train_set()`` and ``protocol()``, from the dataset's
``preprocessing`` at that moment: the engine may replace ``dataset.preprocessing``
after construction (evaluating a checkpoint feeds images as the checkpoint was
trained), so an image set made in ``__init__`` would keep the old one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import DatasetError, UnreadableImage
from .preprocessing import Preprocessing

__all__ = ["IMAGE_SUFFIXES", "PASSES", "ImageFiles", "SampledPairs", "TensorImages", "Triplets", "label_ids", "read_image"]


class TensorImages(torch.utils.data.Dataset):
    """Images held in memory as one (N, 3, H, W) uint8 tensor (RGB, 0-255), preprocessed on access.

    Item i is ``preprocessing(images[i])``: a float tensor (3, S, S). For generated or
    small datasets that fit in memory (css-synthetic renders its scenes into one).
    """

    def __init__(self, images: Tensor, preprocessing: Preprocessing):
        self.images, self.preprocessing = images, preprocessing

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.preprocessing(self.images[index])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
"""File name endings (lower case) taken as images when a dataset lists a folder."""


_DATASET_REMEDY = "replace or remove it, or skip unreadable images with --dataset-opt skip_unreadable=true"


def read_image(path: str | os.PathLike, remedy: str = _DATASET_REMEDY) -> Tensor:
    """One image file -> (3, H, W) uint8 RGB; a missing or corrupt file is named, with ``remedy`` (by default a
    dataset's: replace the file or skip unreadable images).

    Decoded with Pillow (torchvision 0.29 deprecates its own decoders in favour of
    torchcodec, which this project does not depend on), then handed to torchvision.
    """
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert("RGB"))
    except FileNotFoundError:
        raise UnreadableImage(f"image not found: {path}", str(path), "not found", missing=True) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableImage(f"cannot decode image {path} ({reason}); {remedy}", str(path), reason) from None


class ImageFiles(torch.utils.data.Dataset):
    """Image files, decoded on access (``read_image``) and preprocessed: item i is a float tensor (3, S, S).

    Nothing is read when the set is made; a missing or corrupt file is a one-line
    ``DatasetError`` naming it when its item is read (``FileDataset.keep_readable``
    drops such files up front when the user asks to skip them).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], preprocessing: Preprocessing):
        self.paths, self.preprocessing = [Path(p) for p in paths], preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return self.preprocessing(read_image(self.paths[index]), name=f"image {self.paths[index]}")


class Triplets(torch.utils.data.Dataset):
    """Fixed training triplets: row i is (``images[sources[i]]``, ``texts[i]``, ``images[targets[i]]``).

    ``images`` is an image set (``ImageFiles``, ``TensorImages``); ``sources`` and
    ``targets`` are indices into it. Item i is ``{"source": Tensor, "text": str,
    "target": Tensor}``, the training item the engine expects. ``source_images``
    (default: ``images``) renders the sources differently from the targets, indexed
    alike (css's 2d-to-3d trains from flat drawings to renders). ``mods_of`` lists a
    source's texts, which batches of several texts per source need
    (``Dataset.mods_per_source``).
    """

    def __init__(self, images: torch.utils.data.Dataset, sources: Sequence[int], texts: Sequence[str], targets: Sequence[int],
                 *, source_images: torch.utils.data.Dataset | None = None):
        if not (len(sources) == len(texts) == len(targets)):
            raise DatasetError(f"triplets: sources, texts and targets differ in length ({len(sources)}, {len(texts)}, {len(targets)})")
        self.images, self.sources, self.texts, self.targets = images, list(sources), list(texts), list(targets)
        self.source_images = images if source_images is None else source_images

    def __len__(self) -> int:
        return len(self.texts)

    def triplet(self, index: int) -> tuple[int, str, int]:
        """(source, text, target) image indices and text of item ``index``, without loading images."""
        return self.sources[index], self.texts[index], self.targets[index]

    def mods_of(self, source: int) -> dict[str, list[int]]:
        """Every text of ``source`` in these triplets, with the targets it leads to."""
        if not hasattr(self, "_mods"):
            self._mods: dict[int, dict[str, list[int]]] = {}
            for s, text, t in zip(self.sources, self.texts, self.targets):
                self._mods.setdefault(s, {}).setdefault(text, []).append(t)
        return self._mods.get(source, {})

    def __getitem__(self, index: int) -> dict:
        source, text, target = self.triplet(index)
        return {"source": self.source_images[source], "text": text, "target": self.images[target]}


class SampledPairs(torch.utils.data.Dataset):
    """Training triplets drawn afresh by a rule, with no state on the dataset object.

    Use it when a source has many possible targets (any image of a class, say) and a
    fixed list would be too long or too narrow. Item ``j`` is ``draw(j, rng)`` ->
    (source, text, target), indices into ``images``, with ``rng`` a numpy
    Generator seeded from (``seed``, ``j``): the same item is the same triplet in any
    process, so DataLoader workers are safe, and the run's seed repeats an epoch. (The
    reference code draws from the global random state, which forked workers duplicate.)
    Item ``j`` is the same triplet in every epoch, so ``length`` should hold as many
    draws as a run uses: datasets make it ``PASSES`` times their sources or images.
    """

    def __init__(self, images: torch.utils.data.Dataset, length: int,
                 draw: Callable[[int, np.random.Generator], tuple[int, str, int]], *, seed: int = 0, what: str = "dataset",
                 source_images: torch.utils.data.Dataset | None = None,
                 mods_of: Callable[[int], dict[str, Sequence[int]]] | None = None):
        if length <= 0:
            raise DatasetError(f"{what}: no training pairs (no source image has a modification)")
        self.images, self.length, self.draw, self.seed, self.what = images, length, draw, seed, what
        self.source_images = images if source_images is None else source_images  # as in Triplets
        self._mods_of = mods_of

    def mods_of(self, source: int) -> dict[str, Sequence[int]]:
        """Every text the rule can draw for ``source``, with the targets it leads to (``mods_of`` given to the constructor)."""
        if self._mods_of is None:
            raise DatasetError(f"{self.what} cannot list the modifications of one source, so it cannot put several "
                               "of them in a batch; use --mods-per-source 1")
        return self._mods_of(source)

    def __len__(self) -> int:
        return self.length

    def triplet(self, index: int) -> tuple[int, str, int]:
        """(source, text, target) image indices and text of item ``index``, without loading images."""
        return self.draw(index, np.random.default_rng((self.seed, index)))

    def __getitem__(self, index: int) -> dict:
        source, text, target = self.triplet(index)
        return {"source": self.source_images[source], "text": text, "target": self.images[target]}


PASSES = 64
"""Draws per source (or per image) in one epoch of a SampledPairs: enough that a run rarely meets a draw twice."""


def label_ids(keys: Sequence, vocabulary: dict | None = None) -> tuple[Tensor, dict]:
    """Hashable labels -> (integer ids as a long tensor, the vocabulary label -> id).

    Ids follow first appearance. Pass the gallery's vocabulary when mapping the
    queries' labels so that equal labels get equal ids (a label new to it gets a new
    id, which no gallery image has).
    """
    vocabulary = {} if vocabulary is None else vocabulary
    ids = [vocabulary.setdefault(k, len(vocabulary)) for k in keys]
    return torch.tensor(ids, dtype=torch.long), vocabulary
