"""How raw images become model inputs: the resize rule and the normalisation, stored in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import DatasetError

__all__ = ["Preprocessing", "RESIZE_RULES", "IMAGENET_MEAN", "IMAGENET_STD"]

# timm.data.IMAGENET_DEFAULT_MEAN and IMAGENET_DEFAULT_STD (tests/test_dependency_parity.py checks that they are
# equal). Written out, not imported: `import timm.data` imports all of timm's models (about 1.5 s), which would
# roughly double the start-up of `compose-retrieval list`; the engine imports timm only when a timm encoder is built.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_RULES = ("resize_center_crop", "none")


@dataclass
class Preprocessing:
    """How raw images become model inputs; stored in every checkpoint.

    ``resize`` is "resize_center_crop" (torchvision Resize(image_size) of the shorter
    side, then CenterCrop(image_size): google/tirg's real-image datasets)
    or "none" (ToTensor + normalisation only, as google/tirg feeds CSS: images must
    already be image_size x image_size). ``__call__`` applies the rule and the
    normalisation to one (3, H, W) uint8 image.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "resize_center_crop"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"unknown resize rule {self.resize!r}; known: {', '.join(RESIZE_RULES)}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or not 1 <= self.image_size <= 8192:
            raise ValueError(f"image_size must be a whole number of pixels from 1 to 8192, not {self.image_size!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be three finite numbers, not {values!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, not {self.std!r}")
        self._mean = torch.tensor(self.mean).view(3, 1, 1)  # built once, not per image
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def __call__(self, image: Tensor, name: str = "image") -> Tensor:
        """(3, H, W) uint8 -> (3, image_size, image_size) float, normalised; ``name`` labels a size error."""
        size = self.image_size
        if self.resize == "resize_center_crop":
            from torchvision.transforms.v2 import functional as F

            if tuple(image.shape[-2:]) != (size, size):
                image = F.center_crop(F.resize(image, size, antialias=True), size)
        elif tuple(image.shape[-2:]) != (size, size):
            h, w = image.shape[-2:]
            raise DatasetError(
                f"{name} is {w}x{h} but this preprocessing takes {size}x{size} images as they are; "
                f"give --dataset-opt image_size=N to resize and centre-crop them"
            )
        return (image.float().div_(255) - self._mean) / self._std

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std), "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        unknown = sorted(set(d) - {"image_size", "mean", "std", "resize"})
        if unknown:
            raise ValueError(f"unknown preprocessing fields {', '.join(unknown)[:200]}")
        # checkpoints written before the rule was recorded resized and centre-cropped
        return cls(d["image_size"], tuple(d["mean"]), tuple(d["std"]), d.get("resize", "resize_center_crop"))
