"""Small dataset building blocks shared by dataset plugins."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .errors import DatasetError
from .interfaces import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TensorImages(torch.utils.data.Dataset):
    """Images held in memory as one (N, 3, H, W) uint8 tensor, normalised on access."""

    def __init__(self, images: Tensor, preprocessing: Preprocessing):
        self.images = images
        self.mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return (self.images[index].float().div_(255) - self.mean) / self.std


class Triplets(torch.utils.data.Dataset):
    """Training triplets (source image, text, target image) over an image dataset."""

    def __init__(self, images: torch.utils.data.Dataset, sources: Sequence[int], texts: Sequence[str], targets: Sequence[int]):
        if not (len(sources) == len(texts) == len(targets)):
            raise DatasetError(f"triplets: sources, texts and targets differ in length ({len(sources)}, {len(texts)}, {len(targets)})")
        self.images, self.sources, self.texts, self.targets = images, list(sources), list(texts), list(targets)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        return {
            "source": self.images[self.sources[index]],
            "text": self.texts[index],
            "target": self.images[self.targets[index]],
        }


def label_ids(keys: Sequence, vocabulary: dict | None = None) -> tuple[Tensor, dict]:
    """Map hashable labels to integer ids (sharing ``vocabulary`` between gallery and queries)."""
    vocabulary = {} if vocabulary is None else vocabulary
    ids = [vocabulary.setdefault(k, len(vocabulary)) for k in keys]
    return torch.tensor(ids, dtype=torch.long), vocabulary
