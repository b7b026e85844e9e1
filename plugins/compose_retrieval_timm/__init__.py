"""Image encoders from timm: any timm model by name."""

from compose_retrieval import hookimpl

from .encoder import TimmImageEncoder


@hookimpl
def register_image_encoders(register):
    register("timm", TimmImageEncoder)
