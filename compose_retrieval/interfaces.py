"""The interfaces every plugin implements.

Data flows as DESIGN.md draws it: an image encoder turns images into an
``ImageFeatures`` (the embedding and the last feature map), a text encoder turns
strings into a ``TextFeatures`` (sentence vector, per-token states, mask), a
combiner composes the two, and a loss compares composed queries with target
embeddings. Datasets hand out training triplets and a test protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .errors import DatasetError


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


class Component(nn.Module):
    """Base of every pluggable module: remembers the options it was built with.

    ``config()`` returns the JSON-able options that rebuild the module through the
    registry; a checkpoint stores them next to the weights.
    """

    description: ClassVar[str] = ""
    path_options: ClassVar[tuple[str, ...]] = ()
    """Options whose values name files, folders or URLs the component reads (a Hub id, a local model
    folder). A checkpoint's options may hold a path or URL only in these; declare only what the
    component reads without running code (safetensors, JSON, text)."""

    def config(self) -> dict[str, Any]:
        return dict(getattr(self, "_options", {}))

    @classmethod
    def options_for_loading(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options that rebuild the architecture when a checkpoint supplies every weight.

        A component that fetches initial weights (``pretrained=True``) turns that off
        here, so a checkpoint loads offline, years later, without a download.
        """
        return options

    def extra_state_metadata(self) -> dict[str, Any]:
        """JSON-able state that is not a tensor (a vocabulary, a tokenizer name)."""
        return {}

    def load_extra_state_metadata(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state_metadata`` returned."""


class ImageEncoder(Component):
    """Images (B, 3, H, W) -> ImageFeatures.

    Subclasses implement ``features`` (images -> map) and ``head`` (map -> embedding);
    the head is public so that a combiner which edits the map (tirg_lastconv, film)
    lands in the same space as gallery images.
    """

    out_dim: int
    map_channels: int

    def features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def head(self, feature_map: Tensor) -> Tensor:
        raise NotImplementedError

    def feature_blocks(self) -> list[tuple[nn.Module, int]]:
        """(module, channels) of the blocks whose outputs are the successive feature maps.

        The last is the map ``features`` returns. A combiner that conditions the CNN
        itself (film) hooks these modules. Default: none exposed.
        """
        return []

    def backbone(self) -> nn.Module | None:
        """The feature extractor that may carry pretrained weights (no head), or None.

        Training scales its learning rate by ``backbone_lr_scale`` (the paper trains a
        pretrained body at 0.1 x lr on real images). Default: None, no separate rate.
        """
        return None

    def forward(self, images: Tensor) -> ImageFeatures:
        feature_map = self.features(images)
        return ImageFeatures(self.head(feature_map), feature_map)


class TextEncoder(Component):
    """A list of strings -> TextFeatures. Tokenisation is the encoder's own business."""

    out_dim: int
    token_dim: int

    def fit(self, texts: Iterable[str]) -> None:
        """Learn what depends on the training texts (a vocabulary). Default: nothing."""

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        raise NotImplementedError


class Combiner(Component):
    """Composes image and text features into a query.

    Built as ``Combiner(image_dim, text_dim, embed_dim, **options)``, plus whichever
    of the keyword arguments ``map_channels`` (channels of the image feature map),
    ``token_dim`` (size of the text's per-token states) and ``block_channels``
    (channels of each of ``ImageEncoder.feature_blocks``) its signature names.
    ``forward`` returns either a (B, embed_dim) vector or a (B, map_channels, H, W)
    map; the model passes a map through the image encoder's head. ``uses_image`` /
    ``uses_text`` declare what it reads; the model skips an encoder whose output is
    unused and passes ``None`` in its place (the lower-bound baselines ignore one input).
    """

    uses_image: ClassVar[bool] = True
    uses_text: ClassVar[bool] = True
    conditions_image_encoder: ClassVar[bool] = False
    """True when ``image_features`` runs the image encoder under the text's influence."""

    def image_features(self, encoder: ImageEncoder, images: Tensor, text: TextFeatures | None) -> ImageFeatures:
        """The reference images' features. A combiner that conditions the CNN on the text overrides this."""
        return encoder(images)

    def forward(self, image: ImageFeatures | None, text: TextFeatures | None) -> Tensor:
        raise NotImplementedError


class Loss(Component):
    """(queries (B, D), targets (B, D)) -> scalar; row i of queries matches row i of targets."""

    def forward(self, queries: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError


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


RESIZE_RULES = ("resize_center_crop", "none")


@dataclass
class Preprocessing:
    """How raw images become model inputs; stored in every checkpoint.

    ``resize`` is "resize_center_crop" (torchvision Resize(image_size) of the shorter
    side, then CenterCrop(image_size): the real-image datasets of REFERENCE section 5)
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


class Dataset:
    """A dataset plugin: training triplets and test protocols.

    ``train_set(seed, protocol)`` is a torch Dataset whose items are dicts
    ``{"source": Tensor, "text": str, "target": Tensor}`` (a dataset that draws its
    pairs at random draws them from ``seed``, the run's seed; ``protocol`` is the one
    the run is tested on, for a dataset whose training follows it: css's 2d-to-3d
    trains from flat drawings to renders); ``train_texts()`` lists
    every training text (for fitting a vocabulary); ``protocols()`` names the test
    protocols and ``protocol(name)`` builds one. ``default_loss`` is the loss the
    paper used on it. ``mods_per_source`` is how many different texts of one source a
    training batch holds by default (1: pairs drawn independently; 2: google/tirg's CSS
    and MIT-States batches); above 1 the training set must list a source's
    modifications (``mods_of(source) -> {text: [targets]}``, as ``Triplets`` and
    ``SampledPairs`` do).
    """

    description: ClassVar[str] = ""
    default_loss: ClassVar[str] = "soft_triplet"
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


@dataclass
class Registered:
    """One registry entry."""

    name: str
    factory: Any
    plugin: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
