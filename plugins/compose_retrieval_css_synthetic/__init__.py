"""css-synthetic: CSS-style scenes and modifications, generated from a seed (the embedded default dataset)."""

from compose_retrieval import hookimpl

from .dataset import CSSSynthetic


@hookimpl
def register_datasets(register):
    register("css-synthetic", CSSSynthetic)
