"""The pluggable modules: image and text encoders, combiners and losses.

Data flows as docs/architecture.md draws it: an image encoder turns images into an
``ImageFeatures`` (the embedding and the last feature map), a text encoder turns
strings into a ``TextFeatures`` (sentence vector, per-token states, mask), a
combiner composes the two, and a loss compares composed queries with target
embeddings.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

from torch import Tensor, nn

from .features import ImageFeatures, TextFeatures

__all__ = ["Component", "ImageEncoder", "TextEncoder", "Combiner", "Loss"]


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
    main_option: ClassVar[str | None] = None
    """The option that names the architecture (timm's ``model_name``): what ``--backbone`` sets."""

    def features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def head(self, feature_map: Tensor) -> Tensor:
        raise NotImplementedError

    def feature_blocks(self) -> list[tuple[nn.Module, int]]:
        """(module, channels) of the blocks whose outputs are the successive feature maps, (B, channels, H, W) each.

        In order from the input; the last is usually the stage that makes the map ``features``
        returns (a head convolution may follow it). A combiner that conditions the CNN itself
        (film) hooks these modules. Default: none exposed (an encoder whose blocks output
        tokens, not maps, exposes none).
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

    def pair_prototypes(self, objects: ImageFeatures, attributes: TextFeatures | None) -> Tensor | None:
        """Optional: the combiner's own pair scorer for compositional classification (``compose_retrieval.composition``).

        Row j of ``objects`` is the mean image features (pooled vector and feature map) of
        candidate pair j's object over its training images with another attribute; row j
        of ``attributes`` is the text features of the pair's attribute (None when the
        combiner reads no text). Return pair j's prototype, a (P, embed_dim) vector or a
        (P, map_channels, H, W) map as ``forward`` does; images are scored by cosine to it.
        The default (not overridden, or None returned) lets the engine use its prototype
        rule: the mean of the normalised ``compose(x, attribute)`` over those images.
        """
        return None


class Loss(Component):
    """(queries (B, D), targets (B, D)) -> scalar; row i of queries matches row i of targets."""

    def forward(self, queries: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError
