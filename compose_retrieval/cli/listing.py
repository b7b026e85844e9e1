"""`compose-retrieval list` and `compose-retrieval info`: what is installed, and what one component takes."""

from __future__ import annotations

import difflib
import inspect
import json
from typing import Any, Optional

import typer
from rich.table import Table

from .. import registry
from ..errors import UnknownNameError
from ..options import annotations_of, describe_type
from .common import app, console, errors_as_exit

__all__ = ["list_", "info", "KIND_ARGUMENTS"]

# what the commands call each registry kind (plural for `list`; `info` takes either form)
KIND_ARGUMENTS = {
    "combiners": "combiner",
    "image-encoders": "image_encoder",
    "text-encoders": "text_encoder",
    "losses": "loss",
    "datasets": "dataset",
    "recipes": "recipe",
}


def _kind(argument: str) -> str:
    """A kind as the user writes it (combiners, combiner, image-encoder, image_encoder) -> the registry's."""
    forms = {**KIND_ARGUMENTS, **{v: v for v in KIND_ARGUMENTS.values()}, **{v.replace("_", "-"): v for v in KIND_ARGUMENTS.values()}}
    if argument not in forms:
        raise UnknownNameError("kind", argument, difflib.get_close_matches(argument, forms), list(KIND_ARGUMENTS))
    return forms[argument]


@app.command("list")
def list_(
    kind: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(KIND_ARGUMENTS)} (default: all)."),
    pattern: Optional[str] = typer.Argument(None, help="Wildcard filter on names, e.g. 'tirg*' (quote it in a shell)."),
    pattern_option: Optional[str] = typer.Option(None, "--pattern", help="The same filter, as an option."),
) -> None:
    """List the installed combiners, encoders, losses, datasets and recipes (with wildcards: list combiners 'tirg*')."""
    with errors_as_exit():
        chosen = _kind(kind) if kind is not None else None
        wanted = pattern or pattern_option or "*"
        for arg, registry_kind in KIND_ARGUMENTS.items():
            if chosen is not None and registry_kind != chosen:
                continue
            rows = registry.describe(registry_kind, wanted)
            if chosen is None and not rows and wanted != "*":
                continue
            table = Table(title=arg, title_justify="left")
            table.add_column("name", style="bold", no_wrap=True)
            table.add_column("description")
            table.add_column("plugin", style="dim")
            for name, description, plugin in rows:
                table.add_row(name, description, plugin)
            console.print(table)


def _default(parameter: inspect.Parameter) -> str:
    if parameter.default is inspect.Parameter.empty:
        return "(required)"
    return json.dumps(parameter.default) if isinstance(parameter.default, (int, float, str, bool, list, dict, type(None))) else repr(parameter.default)


def component_info(kind: str, name: str) -> dict[str, Any]:
    """What ``info`` shows: the entry's plugin and package, its documentation, and its options (type, default)."""
    entry = registry.get_entry(kind, name)
    found: dict[str, Any] = {"kind": kind, "name": name, **registry.provenance(kind, name), "description": entry.description}
    if kind == "recipe":
        recipe = entry.factory
        found["documentation"] = inspect.getdoc(recipe) if recipe.__doc__ != type(recipe).__doc__ else ""
        found["recipe"] = {"default": recipe.default, "model": recipe.model.to_dict(), "dataset": recipe.dataset,
                           "training": recipe.training, "fallback_loss": recipe.fallback_loss, "backbone_init": recipe.backbone_init}
        return found
    found["documentation"] = inspect.getdoc(entry.factory) or ""
    hints = annotations_of(entry.factory)
    try:
        parameters = inspect.signature(entry.factory).parameters.values()
    except (TypeError, ValueError):
        parameters = []
    found["options"] = [
        {"name": p.name, "type": describe_type(hints.get(p.name)), "default": _default(p)}
        for p in parameters
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in registry.ENGINE_ARGUMENTS and p.name != "self"
    ]
    main = getattr(entry.factory, "main_option", None)
    if main:
        found["main_option"] = main
    return found


def _reflowed(text: str) -> str:
    """A docstring's paragraphs as single lines (the terminal wraps them at its width); indented blocks stay."""
    paragraphs = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        indented = any(line.startswith((" ", "\t")) for line in lines)
        paragraphs.append(block if indented or any(line.lstrip().startswith("- ") for line in lines[1:]) else " ".join(lines))
    return "\n\n".join(paragraphs)


@app.command()
def info(
    kind: str = typer.Argument(..., help=f"One of: {', '.join(KIND_ARGUMENTS)} (or the singular: combiner, dataset, ...)."),
    name: str = typer.Argument(..., help="A name from `list KIND` (or PLUGIN:NAME)."),
    json_output: bool = typer.Option(False, "--json", help="Print it as JSON."),
) -> None:
    """Show one component: its options (type, default), its documentation, and the plugin and package that provide it."""
    with errors_as_exit():
        found = component_info(_kind(kind), name)
    if json_output:
        typer.echo(json.dumps(found, indent=2))
        return
    source = f"plugin {found['plugin']}" + (f", package {found['package']}" if found.get("package") else " (registered in-process)")
    console.print(f"[bold]{found['kind'].replace('_', ' ')} {found['name']}[/]  ({source})", highlight=False)
    if found.get("documentation"):
        console.print(_reflowed(found["documentation"]), highlight=False, markup=False)
    if "recipe" in found:
        console.print_json(json.dumps(found["recipe"]))
        return
    table = Table(title="options", title_justify="left")
    for column in ("option", "type", "default"):
        table.add_column(column, no_wrap=column == "option")
    for option in found["options"]:
        table.add_row(option["name"], option["type"], option["default"])
    if found["options"]:
        console.print(table)
    else:
        console.print("options: none")
    if found.get("main_option"):
        console.print(f"--backbone sets {found['main_option']}")
