"""compose-retrieval: composed image retrieval (reference image + modification text -> images).

TIRG and the baselines of its paper are plugins of one engine (docs/architecture.md).
Everything a plugin or a user needs is importable from here; the names in ``__all__``
(and in each public module's ``__all__``) are the public API.
"""

from .errors import CheckpointError, ComposeRetrievalError, DatasetError, DuplicateNameError, OptionError, UnknownNameError, UnreadableImage
from .hookspecs import hookimpl
from .options import Range
from .features import ImageFeatures, TextFeatures
from .components import Combiner, Component, ImageEncoder, Loss, TextEncoder
from .protocol import RetrievalProtocol
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .data import IMAGE_SUFFIXES, PASSES, ImageFiles, SampledPairs, TensorImages, Triplets, label_ids, read_image
from .datasets import Dataset, FileDataset
from .registry import (
    create,
    list_combiners,
    list_components,
    list_datasets,
    list_image_encoders,
    list_losses,
    list_text_encoders,
    register_plugin,
    reload_plugins,
    unregister_plugin,
)
from .model import ComponentSpec, ComposedRetrievalModel, ModelSpec, build_model
from .checkpoint import load_checkpoint, save_checkpoint
from .zoo import list_pretrained, load_pretrained, save_pretrained
from .config import TrainConfig, make_config
from .training import train
from .composition import CompositionTask, classify, composition_metrics
from .index import Index, SearchResult

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ComposeRetrievalError", "DatasetError", "DuplicateNameError", "OptionError", "UnknownNameError", "UnreadableImage",
    "hookimpl", "Range",
    "ImageFeatures", "TextFeatures", "Combiner", "Component", "ImageEncoder", "Loss", "TextEncoder",
    "RetrievalProtocol", "IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "Dataset", "FileDataset",
    "IMAGE_SUFFIXES", "PASSES", "ImageFiles", "SampledPairs", "TensorImages", "Triplets", "label_ids", "read_image",
    "create", "list_combiners", "list_components", "list_datasets", "list_image_encoders", "list_losses",
    "list_text_encoders", "register_plugin", "reload_plugins", "unregister_plugin",
    "ComponentSpec", "ComposedRetrievalModel", "ModelSpec", "build_model",
    "load_checkpoint", "save_checkpoint", "list_pretrained", "load_pretrained", "save_pretrained",
    "TrainConfig", "make_config", "train",
    "CompositionTask", "classify", "composition_metrics",
    "Index", "SearchResult",
    "__version__",
]
