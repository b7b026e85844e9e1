"""A Hugging Face transformers text encoder (optional: pip install "compose-retrieval[transformers]")."""

from compose_retrieval import hookimpl

from .encoder import TransformersTextEncoder


@hookimpl
def register_text_encoders(register):
    register("transformers", TransformersTextEncoder)
