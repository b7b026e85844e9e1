"""Training recipes: named starting points for a run (model, dataset, loss, optimisation).

A recipe is registered by a plugin like any component (``register_recipes``); the engine
names none. One recipe declares itself the default (``default=True``): it is what
``compose-retrieval train`` and ``make_config()`` use when no recipe is named, and its
model and dataset are the defaults of every option the user leaves out.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from . import registry
from .errors import ComposeRetrievalError, OptionError
from .model import ComponentSpec, ModelSpec

__all__ = ["Recipe", "get_recipe", "default_recipe_name", "list_recipes"]


@dataclass(frozen=True)
class Recipe:
    """A named training recipe.

    ``model``: the combiner, encoders and embedding size a run uses unless the user names
    others. ``dataset``: the default dataset. ``training``: TrainConfig values (optimizer,
    lr, steps, batch_size, lr_schedule, warmup_steps, ...; ``loss`` forces a loss on every
    dataset, leave it out to use the dataset's ``default_loss``). ``fallback_loss``: the loss
    when neither the recipe nor the dataset names one. ``backbone_init``: image-encoder
    options the recipe keeps when the user picks its own backbone at another width or
    pretrained (an initialisation rule, not a size). ``default``: this is the recipe used
    when none is named (exactly one installed recipe should say so).
    """

    description: str
    model: ModelSpec
    dataset: str
    training: dict[str, Any] = field(default_factory=dict)
    fallback_loss: str | None = None
    backbone_init: dict[str, Any] = field(default_factory=dict)
    default: bool = False

    def image_encoder(self, name: str | None = None, backbone: str | None = None, pretrained: bool = False) -> ComponentSpec:
        """The image encoder of a run: the recipe's own, or ``name``, with the architecture ``backbone`` set through
        the encoder's main option and ImageNet weights when ``pretrained``.

        The recipe's full options (a narrow width, say) hold only for its own backbone left as it is; a named backbone
        or pretrained weights start from the architecture's defaults, keeping ``backbone_init`` when the backbone is
        the recipe's own.
        """
        own = self.model.image_encoder
        name = name or own.name
        if backbone is None and not pretrained and name == own.name:
            return copy.deepcopy(own)
        options: dict[str, Any] = {}
        if backbone is not None:
            options[_main_option(name)] = backbone
        if name == own.name:
            main = _main_option(name)
            chosen = options.get(main, own.options.get(main))
            if main in own.options:
                options[main] = chosen
            if chosen == own.options.get(main):
                options.update(copy.deepcopy(self.backbone_init))
        if pretrained:
            if "pretrained" not in (registry.accepted_options("image_encoder", name) or ["pretrained"]):
                raise OptionError(f"--pretrained: the image encoder {name!r} has no pretrained option; see `compose-retrieval info image_encoder {name}`")
            options["pretrained"] = True
        return ComponentSpec(name, options)


def _main_option(encoder: str) -> str:
    main = getattr(registry.get_entry("image_encoder", encoder).factory, "main_option", None)
    if not main:
        raise OptionError(f"--backbone: the image encoder {encoder!r} declares no main option; set its options with --image-encoder-opt KEY=VALUE")
    return main


def list_recipes(pattern: str = "*") -> list[str]:
    """Sorted names of the installed recipes matching a wildcard pattern."""
    return registry.list_components("recipe", pattern)


def default_recipe_name() -> str:
    """The name of the installed recipe that declares itself the default."""
    defaults = [n for n in list_recipes() if getattr(registry.get_entry("recipe", n).factory, "default", False)]
    if len(defaults) != 1:
        found = f"{len(defaults)} ({', '.join(defaults)})" if defaults else "none"
        raise ComposeRetrievalError(
            f"exactly one installed recipe should be the default, found {found}; name one with --recipe "
            f"(installed: {', '.join(list_recipes()) or 'none'})"
        )
    return defaults[0]


def get_recipe(name: str | None = None) -> tuple[str, Recipe]:
    """(name, Recipe) of ``name``, or of the default recipe when ``name`` is None."""
    name = name or default_recipe_name()
    recipe = registry.get_entry("recipe", name).factory
    if not isinstance(recipe, Recipe):
        raise ComposeRetrievalError(f"recipe {name!r} (plugin {registry.get_entry('recipe', name).plugin!r}) is not a compose_retrieval.recipes.Recipe")
    return name, recipe
