"""`compose-retrieval index` (a folder of images into a searchable index) and `compose-retrieval search` (query it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import app, console, err_console, errors_as_exit, parse_options

__all__ = ["index", "search"]

_SHOWN_SKIPPED = 10


@app.command()
def index(
    folder: Path = typer.Argument(..., help="The folder of images (.jpg .jpeg .png .webp, searched recursively)."),
    model: str = typer.Option(..., "--model", help="A zoo name, a run directory or a checkpoint (.safetensors) file."),
    out: Path = typer.Option(..., "--out", help="The index folder: new, empty, or an index of this folder built with "
                             "this model (then only new and changed files are read)."),
    backend: Optional[str] = typer.Option(None, help="Vector search: exact (torch), flat, ivf or hnsw (FAISS); default "
                                          "exact, or what an existing index at --out was built with."),
    backend_opt: Optional[List[str]] = typer.Option(None, "--backend-opt", help="A backend option KEY=VALUE "
                                                   "(ivf: nlist, nprobe; hnsw: m, ef_construction, ef_search)."),
    include: Optional[List[str]] = typer.Option(None, "--include", help="Index only paths (relative to FOLDER) "
                                               "matching this glob; '*' crosses folders. Repeatable. Building again "
                                               "keeps the recorded patterns unless given ('*': every image)."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    workers: int = typer.Option(0, help="DataLoader processes decoding images (0: in this process)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (on stderr)."),
) -> None:
    """Index a folder of images with a trained model, for `search` and `serve`."""
    from ..index import INDEX_SUFFIXES, Index

    with errors_as_exit():
        options = parse_options(backend_opt, "--backend-opt")
        built = Index.build(folder, model, out, backend=backend, backend_options=options, include=include,
                            batch_size=batch_size, num_workers=workers, device=device, progress=progress)
    stats = built.stats
    if not len(built) and not built.skipped:
        err_console.print(f"warning: no image found in {escape(str(built.folder))} (the index reads "
                          f"{' '.join(INDEX_SUFFIXES)} files" + (", matching --include" if built.include else "") + ")",
                          highlight=False, soft_wrap=True)
    console.print(
        f"{len(built)} images of {escape(str(built.folder))} in {escape(str(out))}: embedded {stats.embedded}, "
        f"reused {stats.reused}, dropped {stats.dropped}, skipped {stats.skipped}"
        + (f" ({stats.images_per_second:.1f} images/s)" if stats.embedded else ""),
        highlight=False, soft_wrap=True,
    )
    for entry in built.skipped[:_SHOWN_SKIPPED]:
        err_console.print(f"skipped {escape(entry['path'])}: {escape(entry['reason'])}", highlight=False, soft_wrap=True)
    if len(built.skipped) > _SHOWN_SKIPPED:
        err_console.print(f"... and {len(built.skipped) - _SHOWN_SKIPPED} more skipped (listed in {escape(str(out / 'index.json'))})",
                          highlight=False, soft_wrap=True)


@app.command()
def search(
    index_dir: Path = typer.Argument(..., help="An index folder made by `compose-retrieval index`."),
    image: Optional[Path] = typer.Option(None, "--image", help="The reference image."),
    text: Optional[str] = typer.Option(None, "--text", help="What to change ('make it red')."),
    k: int = typer.Option(10, "-k", "--k", help="How many results."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Write a contact sheet (PNG) of the query and results."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML page of the query and results."),
    model: Optional[str] = typer.Option(None, "--model", help="The checkpoint the index was built with, where it has "
                                        "moved (it must have the recorded sha256)."),
    search_opt: Optional[List[str]] = typer.Option(None, "--search-opt", help="Search wider for this query: KEY=VALUE "
                                                  "(ivf: nprobe; hnsw: ef_search); more recall, more time."),
    include_query: bool = typer.Option(False, "--include-query", help="Keep the query image among the results when "
                                       "it is a file of the index."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
) -> None:
    """Search an index with an image and a text (composed), an image alone, or a text alone where the model allows."""
    from ..index import Index
    from ..sheet import contact_sheet, html_page

    with errors_as_exit():
        loaded = Index.load(index_dir, model=model, device=device)
        if search_opt:
            loaded.set_search_options(**parse_options(search_opt, "--search-opt"))
        result = loaded.search(image, text, k, exclude_self=not include_query)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _print_results(result, index_dir)
    with errors_as_exit():  # the results are printed first: a sheet that cannot be written loses nothing
        if sheet is not None:
            contact_sheet(image, text, result, loaded, sheet)
        if html is not None:
            html_page(image, text, result, loaded, html)
    for written in (sheet, html):
        if written is not None and not json_output:
            console.print(f"wrote {escape(str(written))}", highlight=False)


def _print_results(result, index_dir: Path) -> None:
    what = {"composed": "image + text", "image": "image only", "text": "text only"}[result.mode]
    table = Table(title=f"{escape(str(index_dir))}: {what}", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    for rank, (path, score) in enumerate(zip(result.paths, result.scores), start=1):
        table.add_row(str(rank), f"{score:.4f}", escape(path))
    console.print(table)
    if result.excluded is not None:
        console.print(f"(the query itself, {escape(result.excluded)}, is left out; --include-query keeps it)", highlight=False)
