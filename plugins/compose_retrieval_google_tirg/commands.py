"""`compose-retrieval zoo import-tirg`: the authors' checkpoint -> a zoo file in the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def import_tirg_command(
    file: Path = typer.Argument(..., help="google/tirg's checkpoint_<dataset>.pth."),
    dataset: str = typer.Option(..., help="What it was trained on: fashion200k, mitstates or css."),
    data_root: Path = typer.Option(..., help="That dataset on disk: its training texts rebuild the vocabulary."),
    name: Optional[str] = typer.Option(None, help="Zoo name (default: tirg-fashion200k, tirg-mitstates, tirg-css3d)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where to write it (default: the zoo's cache)."),
) -> None:
    """Convert a released google/tirg checkpoint (read weights-only, nothing unpickled) into a safetensors zoo file."""
    from compose_retrieval.cli import console, errors_as_exit

    from .importer import RELEASES, import_tirg

    with errors_as_exit():
        out = import_tirg(file, dataset, data_root, name=name, cache_dir=cache_dir)
    # the zoo name finds the file only in the default cache and under a manifest name; the path always does
    target = RELEASES[dataset][0] if name is None and cache_dir is None else out
    console.print(f"wrote {out}; evaluate it with: compose-retrieval evaluate {target} --data-root {data_root}")
