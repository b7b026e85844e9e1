"""Hook specifications: what a plugin can contribute.

A plugin is a module (or object) with functions marked ``@hookimpl``; each hook is
handed a ``register`` callback::

    from compose_retrieval import hookimpl

    @hookimpl
    def register_combiners(register):
        register("my_combiner", MyCombiner)

``register(name, factory, description=None)``: the factory is called with the
component's options; the description defaults to the first line of its docstring.
"""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT", "hookspec", "hookimpl"]

PROJECT = "compose_retrieval"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_image_encoders(register):
    """Register ImageEncoder factories."""


@hookspec
def register_text_encoders(register):
    """Register TextEncoder factories."""


@hookspec
def register_combiners(register):
    """Register Combiner factories: Combiner(image_dim, text_dim, embed_dim, **options)."""


@hookspec
def register_losses(register):
    """Register Loss factories."""


@hookspec
def register_datasets(register):
    """Register Dataset factories: Dataset(data_root=None, **options)."""


@hookspec
def register_recipes(register):
    """Register training recipes: register(name, Recipe(...)) (see compose_retrieval.recipes)."""


@hookspec
def register_pretrained(register):
    """Register named checkpoints for the model zoo: register(name, entry_dict)."""


@hookspec
def register_commands(app, data, zoo):
    """Add commands to the ``compose-retrieval`` CLI: ``app`` is the Typer app, ``data`` its
    ``compose-retrieval data`` group (commands that make or inspect datasets), ``zoo`` its
    ``compose-retrieval zoo`` group (commands that make checkpoints for the zoo)."""
