"""Small dataset building blocks shared by dataset plugins."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import DatasetError
from .interfaces import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Normalised(torch.utils.data.Dataset):
    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing
        self.mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(3, 1, 1)

    def normalise(self, image: Tensor) -> Tensor:
        """(3, H, W) uint8 -> float, scaled to [0, 1], minus mean, over std."""
        return (image.float().div_(255) - self.mean) / self.std


class TensorImages(_Normalised):
    """Images held in memory as one (N, 3, H, W) uint8 tensor, normalised on access."""

    def __init__(self, images: Tensor, preprocessing: Preprocessing):
        super().__init__(preprocessing)
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.normalise(self.images[index])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def read_image(path: str | os.PathLike) -> Tensor:
    """One image file -> (3, H, W) uint8 RGB; a missing or corrupt file is named.

    Decoded with Pillow (torchvision 0.29 deprecates its own decoders in favour of
    torchcodec, which this project does not depend on), then handed to torchvision.
    """
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(
            f"cannot decode image {path} ({reason}); replace or remove it, or skip unreadable images "
            "with --dataset-opt skip_unreadable=true"
        ) from None


def readable_images(paths: Sequence[Path]) -> tuple[set[Path], list[Path]]:
    """(the paths that decode, the ones that do not): one full decode of each distinct file."""
    good, bad = set(), []
    for path in dict.fromkeys(paths):
        try:
            read_image(path)
            good.add(path)
        except DatasetError:
            bad.append(path)
    return good, bad


def warn_skipped(dataset: str, bad: Sequence[Path], rows: int) -> None:
    if bad:
        warnings.warn(
            f"{dataset}: skipped {len(bad)} unreadable image(s) and the {rows} row(s) that use them "
            f"(first: {bad[0]})",
            stacklevel=3,
        )


class ImageFiles(_Normalised):
    """Image files, decoded (``read_image``), resized (shorter side) and centre-cropped to the preprocessing's size, normalised."""

    def __init__(self, paths: Sequence[str | os.PathLike], preprocessing: Preprocessing):
        super().__init__(preprocessing)
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        from torchvision.transforms.v2 import functional as F

        size = self.preprocessing.image_size
        image = F.center_crop(F.resize(read_image(self.paths[index]), size, antialias=True), size)
        return self.normalise(image)


class Triplets(torch.utils.data.Dataset):
    """Training triplets (source image, text, target image) over an image dataset."""

    def __init__(self, images: torch.utils.data.Dataset, sources: Sequence[int], texts: Sequence[str], targets: Sequence[int]):
        if not (len(sources) == len(texts) == len(targets)):
            raise DatasetError(f"triplets: sources, texts and targets differ in length ({len(sources)}, {len(texts)}, {len(targets)})")
        self.images, self.sources, self.texts, self.targets = images, list(sources), list(texts), list(targets)

    def __len__(self) -> int:
        return len(self.texts)

    def triplet(self, index: int) -> tuple[int, str, int]:
        """(source, text, target) image indices and text of item ``index``, without loading images."""
        return self.sources[index], self.texts[index], self.targets[index]

    def __getitem__(self, index: int) -> dict:
        source, text, target = self.triplet(index)
        return {"source": self.images[source], "text": text, "target": self.images[target]}


class SampledPairs(torch.utils.data.Dataset):
    """Training triplets drawn afresh by a rule, with no state on the dataset object.

    Item ``j`` takes source image ``sources[j % len(sources)]`` and asks
    ``draw(source, rng)`` for a (target, text), with ``rng`` seeded from (``seed``, ``j``):
    the same item is the same triplet in any process, so DataLoader workers are safe and
    a seed repeats a run, while ``repeats`` copies of every source give each of them
    that many independent draws per pass over the dataset (the reference code instead
    keeps a global random state, which workers duplicate).
    """

    def __init__(self, images: torch.utils.data.Dataset, sources: Sequence[int], draw, *, seed: int = 0, repeats: int = 64):
        if not len(sources):
            raise DatasetError("no training pairs: no source image has a modification")
        self.images, self.sources, self.draw, self.seed, self.repeats = images, list(sources), draw, seed, repeats

    def __len__(self) -> int:
        return len(self.sources) * self.repeats

    def triplet(self, index: int) -> tuple[int, str, int]:
        """(source, text, target) image indices and text of item ``index``, without loading images."""
        source = self.sources[index % len(self.sources)]
        target, text = self.draw(source, np.random.default_rng((self.seed, index)))
        return source, text, target

    def __getitem__(self, index: int) -> dict:
        source, text, target = self.triplet(index)
        return {"source": self.images[source], "text": text, "target": self.images[target]}


def label_ids(keys: Sequence, vocabulary: dict | None = None) -> tuple[Tensor, dict]:
    """Map hashable labels to integer ids (sharing ``vocabulary`` between gallery and queries)."""
    vocabulary = {} if vocabulary is None else vocabulary
    ids = [vocabulary.setdefault(k, len(vocabulary)) for k in keys]
    return torch.tensor(ids, dtype=torch.long), vocabulary
