"""compose-retrieval: composed image retrieval (reference image + modification text -> images).

TIRG and the baselines of its paper are plugins of one engine; see DESIGN.md.
"""

from .errors import CheckpointError, ComposeRetrievalError, DatasetError, DuplicateNameError, OptionError, UnknownNameError
from .hookspecs import hookimpl
from .interfaces import (
    Combiner,
    Dataset,
    ImageEncoder,
    ImageFeatures,
    Loss,
    Preprocessing,
    RetrievalProtocol,
    TextEncoder,
    TextFeatures,
)
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

__version__ = "0.1.0"
