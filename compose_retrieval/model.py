"""The composed-retrieval model: encoders + combiner + learnable-scale L2 normalisation."""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import registry
from .errors import ComposeRetrievalError, OptionError
from .components import Combiner, ImageEncoder, TextEncoder
from .features import ImageFeatures, TextFeatures
from .preprocessing import Preprocessing
from .options import Range, check_value

__all__ = ["ComponentSpec", "ModelSpec", "NormalizationLayer", "ComposedRetrievalModel", "build_model", "MAX_EMBED_DIM"]

MAX_EMBED_DIM = 65536


@dataclass
class ComponentSpec:
    """A registry name and the options to build it with."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 200:
            raise OptionError(f"a component name must be a short string, not {str(self.name)[:60]!r}")
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise OptionError(f"the options of {self.name!r} must be a mapping of names to values")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's architecture through the registry.

    ``compose_retrieval.config.make_config`` fills in what a user leaves out from the default recipe.
    """

    combiner: ComponentSpec
    image_encoder: ComponentSpec
    text_encoder: ComponentSpec
    embed_dim: int = 512
    normalization_scale: float = 4.0

    def __post_init__(self) -> None:
        for key in ("combiner", "image_encoder", "text_encoder"):
            if not isinstance(getattr(self, key), ComponentSpec):
                raise OptionError(f"the model's {key} must be a component (name and options)")
        check_value("the model", "embed_dim", self.embed_dim, Annotated[int, Range(1, MAX_EMBED_DIM)])
        check_value("the model", "normalization_scale", self.normalization_scale, Annotated[float, Range(1e-6, 1e6)])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        """The spec a dict (a checkpoint's or a config's) describes; unknown fields are errors, not ignored."""
        if not isinstance(d, dict):
            raise OptionError(f"a model spec is a mapping, not a {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise OptionError(f"the model spec has fields this version does not know: {', '.join(unknown)[:200]}")
        missing = [k for k in ("combiner", "image_encoder", "text_encoder") if k not in d]
        if missing:
            raise OptionError(f"the model spec names no {', '.join(missing)}")
        d = dict(d)
        for key in ("combiner", "image_encoder", "text_encoder"):
            if key in d:
                value = d[key]
                if not isinstance(value, dict) or set(value) - {"name", "options"} or "name" not in value:
                    raise OptionError(f"the model's {key} must be {{'name': ..., 'options': {{...}}}}")
                d[key] = ComponentSpec(**value)
        return cls(**d)


class NormalizationLayer(nn.Module):
    """x -> scale * x / ||x||, with a learnable scale (google/tirg's NormalizationLayer, initialised to 4.0)."""

    def __init__(self, scale: float = 4.0, learn_scale: bool = True):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=-1)


class ComposedRetrievalModel(nn.Module):
    """Composes (image, text) queries and embeds gallery images in one space.

    ``compose(images, texts)`` and ``embed_images(images)`` return L2-normalised
    embeddings times the learnable scale; ``forward(sources, texts, targets)`` returns
    both for a training batch, pushing sources and targets through the image encoder
    as one batch.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        combiner: Combiner,
        normalization_scale: float = 4.0,
        spec: ModelSpec | None = None,
        preprocessing: Preprocessing | None = None,
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.combiner = combiner
        self.normalization = NormalizationLayer(normalization_scale)
        self.spec = spec
        self.preprocessing = preprocessing

    def place(self, device: torch.device | str) -> "ComposedRetrievalModel":
        """Move to ``device`` in channels-last layout (faster convolutions on CPU and GPU); returns self."""
        return self.to(device).to(memory_format=torch.channels_last)

    def _compose(self, image_features: ImageFeatures | None, text: TextFeatures | None) -> Tensor:
        composed = self.combiner(image_features, text)
        if composed.dim() == 4:  # a modified feature map: pool and project like any gallery image
            composed = self.image_encoder.head(composed)
        return self.normalization(composed)

    def embed_images(self, images: Tensor) -> Tensor:
        return self.normalization(self.image_encoder(images).pooled)

    def compose(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        if len(texts) != images.shape[0]:
            raise ComposeRetrievalError(f"compose: {images.shape[0]} images but {len(texts)} texts")
        text = self.text_encoder(list(texts)) if self.combiner.uses_text else None
        image = self.combiner.image_features(self.image_encoder, images, text) if self.combiner.uses_image else None
        return self._compose(image, text)

    def forward(self, sources: Tensor, texts: Sequence[str], targets: Tensor) -> tuple[Tensor, Tensor]:
        text = self.text_encoder(list(texts)) if self.combiner.uses_text else None
        if not self.combiner.uses_image:
            return self._compose(None, text), self.embed_images(targets)
        if self.combiner.conditions_image_encoder:
            source_features = self.combiner.image_features(self.image_encoder, sources, text)
            target_embeddings = self.normalization(self.image_encoder(targets).pooled)
        else:  # one encoder pass over sources and targets together
            n = sources.shape[0]
            features = self.image_encoder(torch.cat([sources, targets]))
            source_features = ImageFeatures(*(f[:n] for f in features))
            target_embeddings = self.normalization(features.pooled[n:])
        return self._compose(source_features, text), target_embeddings

    def extra_state_metadata(self) -> dict[str, Any]:
        """Non-tensor state of the components (a vocabulary), keyed by component."""
        return {
            key: state
            for key in ("image_encoder", "text_encoder", "combiner")
            if (state := getattr(self, key).extra_state_metadata())
        }

    def load_extra_state_metadata(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            getattr(self, key).load_extra_state_metadata(value)


def build_model(
    spec: ModelSpec | dict[str, Any], preprocessing: Preprocessing | None = None, *, for_checkpoint: bool = False
) -> ComposedRetrievalModel:
    """Build a model from its spec through the registry (weights freshly initialised).

    ``for_checkpoint``: the weights will come from a checkpoint, so no component
    fetches initial weights (see ``Component.options_for_loading``).
    """
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    spec = copy.deepcopy(spec)

    def options(kind: str, component: ComponentSpec) -> dict[str, Any]:
        registry.check_options(kind, component.name, component.options)
        loading = getattr(registry.get_entry(kind, component.name).factory, "options_for_loading", None)
        return loading(dict(component.options)) if for_checkpoint and loading else component.options

    image_encoder = registry.create(
        "image_encoder", spec.image_encoder.name, out_dim=spec.embed_dim, **options("image_encoder", spec.image_encoder)
    )
    text_encoder = registry.create(
        "text_encoder", spec.text_encoder.name, out_dim=spec.embed_dim, **options("text_encoder", spec.text_encoder)
    )
    provided = {
        "map_channels": image_encoder.map_channels,
        "token_dim": text_encoder.token_dim,
        "block_channels": [channels for _, channels in image_encoder.feature_blocks()],
    }
    wanted = inspect.signature(registry.get_entry("combiner", spec.combiner.name).factory).parameters
    combiner = registry.create(
        "combiner",
        spec.combiner.name,
        image_encoder.out_dim,
        text_encoder.out_dim,
        spec.embed_dim,
        **{k: v for k, v in provided.items() if k in wanted},
        **options("combiner", spec.combiner),
    )
    return ComposedRetrievalModel(image_encoder, text_encoder, combiner, spec.normalization_scale, spec, preprocessing)
