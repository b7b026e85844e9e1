"""The ``compose-retrieval`` command line: a thin layer over the public API."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Iterator, List, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import registry
from .errors import ComposeRetrievalError, OptionError, UnknownNameError
from .options import Range, check_value

app = typer.Typer(
    help="Composed image retrieval: train, evaluate and list TIRG and its baselines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make and inspect datasets (commands added by dataset plugins).", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

KIND_ARGUMENTS = {
    "combiners": "combiner",
    "image-encoders": "image_encoder",
    "text-encoders": "text_encoder",
    "losses": "loss",
    "datasets": "dataset",
}


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


DEBUG_ENV = "COMPOSE_RETRIEVAL_DEBUG"
_debug = False


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help=f"Show the full traceback of an error (or set {DEBUG_ENV}=1)."),
) -> None:
    """Composed image retrieval: train, evaluate and list TIRG and its baselines."""
    global _debug
    _debug = debug


def debugging() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def errors_as_exit() -> Iterator[None]:
    """Errors become one red line on stderr and exit code 1, never a traceback (unless --debug).

    A library error says what was wrong and what to do; anything else is a bug of ours or
    of a plugin, printed as one line with its type and the way to see the traceback.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, click.exceptions.ClickException, click.exceptions.Exit):
        raise
    except Exception as exc:
        if debugging():
            raise
        if isinstance(exc, ComposeRetrievalError):
            print_error(str(exc))
        elif isinstance(exc, FileNotFoundError):
            print_error(f"file not found: {exc.filename or exc}")
        else:
            text = " ".join(str(exc).split())[:300]
            print_error(f"unexpected {type(exc).__name__}: {text} (run with --debug for the traceback)")
        raise typer.Exit(1) from None


def parse_options(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """KEY=VALUE pairs -> dict; values are read as JSON when they parse ("64", "true", "[1,2]"), else as strings."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ComposeRetrievalError(f"{what} option {pair!r} is not KEY=VALUE (for example hash_size=64)")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    keys = [k for k in metrics if "recall@" in k]
    for k in keys:
        table.add_column(k, justify="right")
    table.add_row(*(f"{metrics[k]:.4f}" for k in keys))
    console.print(table)
    console.print(f"protocol: {metrics.get('protocol')}  queries: {metrics.get('queries')}  gallery: {metrics.get('gallery')}")


@app.command()
def train(
    combiner: str = typer.Option("tirg", help="How image and text are composed (see `list combiners`)."),
    dataset: str = typer.Option("css-synthetic", help="Training and test data (see `list datasets`)."),
    data_root: Optional[str] = typer.Option(None, help="Where the dataset's files are (not for css-synthetic)."),
    protocol: Optional[str] = typer.Option(None, help="Test protocol of the dataset (default: its first)."),
    image_encoder: str = typer.Option("timm", help="Image encoder plugin."),
    backbone: Optional[str] = typer.Option(
        None, help="timm model name for the timm image encoder (default: the recipe's; cpu: ResNet-18 at half width)."
    ),
    pretrained: bool = typer.Option(False, help="Start from ImageNet weights (needs them cached or a network)."),
    text_encoder: str = typer.Option("lstm", help="Text encoder plugin."),
    loss: Optional[str] = typer.Option(None, help="Loss (default: the dataset's, as in the paper)."),
    embed_dim: int = typer.Option(512, help="Embedding size."),
    init_from: Optional[str] = typer.Option(
        None, help="Start from this checkpoint or zoo name (its model, weights and vocabulary; fine-tuning)."
    ),
    recipe: str = typer.Option("cpu", help="Training recipe: 'cpu' (minutes on a laptop) or 'paper' (google/tirg)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (overrides the recipe)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (overrides the recipe)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (overrides the recipe)."),
    optimizer: Optional[str] = typer.Option(None, help="sgd or adamw (overrides the recipe)."),
    mods_per_source: Optional[int] = typer.Option(
        None, help="Different texts of one source in a batch (default: the dataset's; css and mitstates: 2, as google/tirg)."
    ),
    seed: int = typer.Option(0, help="Random seed of the model and the batches."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    run_dir: Optional[Path] = typer.Option(None, help="Where the config, metrics and checkpoint go (default runs/NAME-TIME)."),
    combiner_opt: Optional[List[str]] = typer.Option(None, help="Combiner option KEY=VALUE (repeatable)."),
    image_encoder_opt: Optional[List[str]] = typer.Option(None, help="Image encoder option KEY=VALUE (repeatable)."),
    text_encoder_opt: Optional[List[str]] = typer.Option(None, help="Text encoder option KEY=VALUE (repeatable)."),
    loss_opt: Optional[List[str]] = typer.Option(None, help="Loss option KEY=VALUE (repeatable)."),
    dataset_opt: Optional[List[str]] = typer.Option(None, help="Dataset option KEY=VALUE (repeatable)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a model and evaluate recall@K on the dataset's test protocol."""
    from .model import ComponentSpec, ModelSpec
    from .training import TrainConfig, new_run_dir, recipe_backbone, train as run_training

    with errors_as_exit():
        model_options = {
            "--combiner": combiner != "tirg", "--backbone": backbone, "--pretrained": pretrained,
            "--image-encoder": image_encoder != "timm", "--text-encoder": text_encoder != "lstm",
            "--embed-dim": embed_dim != 512, "--combiner-opt": combiner_opt,
            "--image-encoder-opt": image_encoder_opt, "--text-encoder-opt": text_encoder_opt,
        }
        if init_from and any(model_options.values()):
            given = ", ".join(k for k, v in model_options.items() if v)
            raise OptionError(f"--init-from takes the model from the checkpoint; drop {given}")
        image_options: dict[str, Any] = {}
        if image_encoder != "timm" and (backbone or pretrained):
            raise OptionError(
                f"--backbone and --pretrained choose a timm model; for the image encoder {image_encoder!r} "
                "use --image-encoder-opt KEY=VALUE"
            )
        if image_encoder == "timm":
            image_options = recipe_backbone(recipe, pretrained, backbone)
        spec = ModelSpec(
            combiner=ComponentSpec(combiner, parse_options(combiner_opt, "combiner")),
            image_encoder=ComponentSpec(image_encoder, {**image_options, **parse_options(image_encoder_opt, "image encoder")}),
            text_encoder=ComponentSpec(text_encoder, parse_options(text_encoder_opt, "text encoder")),
            embed_dim=embed_dim,
        )
        what = Path(init_from).stem if init_from else combiner
        config = TrainConfig.from_recipe(
            recipe,
            model=spec,
            init_from=init_from,
            dataset=dataset,
            dataset_options=parse_options(dataset_opt, "dataset"),
            data_root=data_root,
            protocol=protocol,
            loss=loss,
            loss_options=parse_options(loss_opt, "loss"),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            mods_per_source=mods_per_source,
            seed=seed,
            device=device,
            num_workers=workers,
            run_dir=str(run_dir) if run_dir else None,
        )
        config.validate()
        if run_dir is None:  # a new folder of its own, even when runs start in the same second
            run_dir = new_run_dir("runs", f"{what}-{dataset}")
            config = dataclasses.replace(config, run_dir=str(run_dir))
        console.print(f"training [bold]{what}[/] on [bold]{dataset}[/] for {config.steps} steps ({recipe} recipe) -> {run_dir}")
        result = run_training(config, progress=progress)
    print_metrics(result.metrics, f"{what} on {dataset}")
    console.print(f"run directory: {result.run_dir}")


@app.command()
def compare(
    combiners: Optional[List[str]] = typer.Option(None, "--combiner", help="Combiners to compare (repeatable; default: all)."),
    seeds: int = typer.Option(1, help="Seeds 0..N-1 for every combiner."),
    seeds_for: Optional[List[str]] = typer.Option(None, help="More seeds for some combiners: NAME=N (repeatable)."),
    dataset: str = typer.Option("css-synthetic", help="Training and test data (see `list datasets`)."),
    data_root: Optional[str] = typer.Option(None, help="Where the dataset's files are (not for css-synthetic)."),
    dataset_opt: Optional[List[str]] = typer.Option(None, help="Dataset option KEY=VALUE (repeatable)."),
    recipe: str = typer.Option("cpu", help="Training recipe shared by every run."),
    steps: Optional[int] = typer.Option(None, help="Training steps (overrides the recipe)."),
    mods_per_source: Optional[int] = typer.Option(None, help="Different texts of one source in a batch (default: the dataset's)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
    out: Path = typer.Option(Path("runs/compare"), help="Run directories and comparison.md / comparison.csv go here."),
) -> None:
    """Train every combiner with one recipe and the same seeds; write one table (Markdown and CSV)."""
    from .compare import run_comparison, write_tables
    from .training import TrainConfig

    with errors_as_exit():
        names = combiners or registry.list_combiners()
        for name in names:
            registry.get_entry("combiner", name)
        counts = {name: seeds for name in names}
        for name, n in parse_options(seeds_for, "--seeds-for").items():
            registry.get_entry("combiner", name)
            counts[name] = n
        for name, n in counts.items():
            check_value("compare", f"seeds of {name}", n, Annotated[int, Range(1, 1000)])
        base = TrainConfig.from_recipe(
            recipe, dataset=dataset, data_root=data_root, dataset_options=parse_options(dataset_opt, "dataset"),
            steps=steps, mods_per_source=mods_per_source, device=device,
        )
        base.validate()

        def report(name: str, seed: int, metrics: dict[str, Any]) -> None:
            console.print(f"{name} seed {seed}: recall@1 {metrics['recall@1']:.4f}")

        rows = run_comparison(base, names, {n: range(counts[n]) for n in names}, out, on_run=report)
        md, csv_path = write_tables(rows, out)
    console.print(md.read_text())
    console.print(f"tables: {md} {csv_path}")


@app.command()
def evaluate(
    path: str = typer.Argument(..., help="A run directory, a checkpoint (.safetensors) file or a zoo name."),
    data_root: Optional[str] = typer.Option(None, help="Where the dataset's files are (a checkpoint never chooses them; not for css-synthetic)."),
    protocol: Optional[str] = typer.Option(None, help="Test protocol (default: the one the model was evaluated on)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
    batch_size: int = typer.Option(256, help="Images per forward pass."),
    json_output: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Evaluate a saved model on the test protocol of the dataset it was trained on."""
    from .evaluation import evaluate_checkpoint

    with errors_as_exit():
        metrics = evaluate_checkpoint(path, data_root=data_root, protocol=protocol, device=device, batch_size=batch_size)
    if json_output:
        typer.echo(json.dumps(metrics))
    else:
        print_metrics(metrics, str(path))


zoo_app = typer.Typer(help="Named checkpoints: list them, see one, export or import one.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("list")
def zoo_list(pattern: str = typer.Argument("*", help="Wildcard filter on names.")) -> None:
    """The zoo's checkpoints, with where each comes from and its recorded recall@1."""
    from .zoo import cache_dir, list_pretrained, pretrained_info, zoo_dir

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
    from .zoo import entry_dict, pretrained_info

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
    from .checkpoint import load_checkpoint
    from .evaluation import evaluate_checkpoint
    from .zoo import export_pretrained, resolve

    with errors_as_exit():
        if out.exists() and not overwrite:
            raise ComposeRetrievalError(f"{out} exists; give --overwrite to replace it, or another file name")
        model, meta = load_checkpoint(resolve(run))
        info = export_pretrained(
            model, out, recipe=meta.get("recipe"), half=half, overwrite=overwrite,
            evaluate=lambda stored: evaluate_checkpoint(stored, data_root=data_root, device=device),
        )
    typer.echo(json.dumps({"file": str(out), **info}, indent=2))


@app.command("list")
def list_(
    kind: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(KIND_ARGUMENTS)} (default: all)."),
    pattern: str = typer.Option("*", help="Wildcard filter on names."),
) -> None:
    """List the installed combiners, encoders, losses and datasets."""
    with errors_as_exit():
        if kind is not None and kind not in KIND_ARGUMENTS:
            raise UnknownNameError("kind", kind, difflib.get_close_matches(kind, KIND_ARGUMENTS), list(KIND_ARGUMENTS))
        for arg, registry_kind in KIND_ARGUMENTS.items():
            if kind is not None and arg != kind:
                continue
            table = Table(title=arg, title_justify="left")
            table.add_column("name", style="bold")
            table.add_column("description")
            table.add_column("plugin", style="dim")
            for name, description, plugin in registry.describe(registry_kind, pattern):
                table.add_row(name, description, plugin)
            console.print(table)


_plugin_commands_added = False


def add_plugin_commands() -> None:
    """Let plugins add commands through their register_commands hook (once)."""
    global _plugin_commands_added
    if not _plugin_commands_added:
        _plugin_commands_added = True
        registry.get_plugin_manager().hook.register_commands(app=app, data=data_app, zoo=zoo_app)


def main() -> None:
    """Entry point of the ``compose-retrieval`` console script."""
    try:
        add_plugin_commands()
    except ComposeRetrievalError as exc:
        print_error(str(exc))
        raise SystemExit(1) from None
    app()
