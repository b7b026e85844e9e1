"""`compose-retrieval zoo ...`: list, info and export named checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import ComposeRetrievalError
from .common import console, errors_as_exit, zoo_app

__all__ = ["zoo_list", "zoo_info", "zoo_export"]


@zoo_app.command("list")
def zoo_list(pattern: str = typer.Argument("*", help="Wildcard filter on names.")) -> None:
    """The zoo's checkpoints, with where each comes from and its recorded recall@1."""
    from ..zoo import cache_dir, list_pretrained, pretrained_info, zoo_dir

    with errors_as_exit():
        table = Table(title="pretrained models")
        table.add_column("name", no_wrap=True)
        for column in ("description", "dataset", "recall@1", "available"):
            table.add_column(column)
        for name in list_pretrained(pattern):
            entry = pretrained_info(name)
            r1 = entry.metrics.get("recall@1")
            # in the order resolve() looks: a shipped file wins over the cache
            where = "shipped" if entry.file and (zoo_dir() / entry.file).is_file() else (
                "cached" if (cache_dir() / f"{name}.safetensors").is_file() else
                "download" if entry.url or entry.hf_hub_id else "make it: zoo info " + name)
            table.add_row(name, entry.description, entry.dataset or "", f"{r1:.4f}" if r1 is not None else "", where)
    console.print(table)


@zoo_app.command("info")
def zoo_info(name: str = typer.Argument(..., help="A zoo name (see `zoo list`).")) -> None:
    """Everything the manifest records about one checkpoint, as JSON."""
    from ..zoo import entry_dict, pretrained_info

    with errors_as_exit():
        entry = pretrained_info(name)
    typer.echo(json.dumps(entry_dict(entry), indent=2))


@zoo_app.command("export")
def zoo_export(
    run: str = typer.Argument(..., help="A run directory or checkpoint to export."),
    out: Path = typer.Argument(..., help="The zoo file to write (.safetensors)."),
    half: bool = typer.Option(True, help="Store the weights as float16 (half the size)."),
    data_root: Optional[str] = typer.Option(None, help="Where the dataset's files are, to re-evaluate on (not for css-synthetic)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    device: str = typer.Option("auto", help="Where to re-evaluate it."),
) -> None:
    """Write a trained model as a zoo file, re-evaluated as stored; print its metrics and sha256."""
    from ..checkpoint import load_checkpoint
    from ..evaluation import evaluate_checkpoint
    from ..zoo import export_pretrained, resolve

    with errors_as_exit():
        if out.exists() and not overwrite:
            raise ComposeRetrievalError(f"{out} exists; give --overwrite to replace it, or another file name")
        model, meta = load_checkpoint(resolve(run))
        info = export_pretrained(
            model, out, recipe=meta.get("recipe"), half=half, overwrite=overwrite,
            evaluate=lambda stored: evaluate_checkpoint(stored, data_root=data_root, device=device),
        )
    typer.echo(json.dumps({"file": str(out), **info}, indent=2))
