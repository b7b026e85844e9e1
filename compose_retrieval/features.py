"""What encoders hand to combiners: the feature tuples of a batch of images and of texts."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["ImageFeatures", "TextFeatures"]


class ImageFeatures(NamedTuple):
    """What an image encoder returns for a batch of images."""

    pooled: Tensor
    """(B, out_dim): the embedding, i.e. ``head(feature_map)``."""
    feature_map: Tensor
    """(B, map_channels, H, W): the last convolutional map, before pooling."""


class TextFeatures(NamedTuple):
    """What a text encoder returns for a batch of strings."""

    sentence: Tensor
    """(B, out_dim): one vector per text."""
    tokens: Tensor
    """(B, T, token_dim): per-token states."""
    mask: Tensor
    """(B, T) bool: True where a token is real, False for padding."""
