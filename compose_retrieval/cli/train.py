"""`compose-retrieval train` and `compose-retrieval compare`."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Annotated, Any, Iterator, List, Optional

import typer

from .. import registry
from ..errors import OptionError
from ..options import Range, check_value
from .common import app, console, errors_as_exit, parse_options, print_metrics

__all__ = ["train", "compare"]

_RECIPE_HELP = "Training recipe (see `list recipes`; default: the installed default, cpu: minutes on a laptop)."


@app.command()
def train(
    ctx: typer.Context,
    combiner: Optional[str] = typer.Option(None, help="How image and text are composed (see `list combiners`; default: the recipe's, tirg)."),
    dataset: Optional[str] = typer.Option(None, help="Training and test data (see `list datasets`; default: the recipe's)."),
    data_root: Optional[str] = typer.Option(None, help="Where the dataset's files are (not for generated datasets)."),
    protocol: Optional[str] = typer.Option(None, help="Test protocol of the dataset (default: its first)."),
    image_encoder: Optional[str] = typer.Option(None, help="Image encoder plugin (default: the recipe's)."),
    backbone: Optional[str] = typer.Option(
        None, help="The image encoder's architecture, its main option (timm: a model name; default: the recipe's)."
    ),
    pretrained: bool = typer.Option(False, help="Start from ImageNet weights (needs them cached or a network)."),
    text_encoder: Optional[str] = typer.Option(None, help="Text encoder plugin (default: the recipe's)."),
    loss: Optional[str] = typer.Option(None, help="Loss (default: the recipe's, else the dataset's)."),
    embed_dim: Optional[int] = typer.Option(None, help="Embedding size (default: the recipe's)."),
    init_from: Optional[str] = typer.Option(
        None, help="Start from this checkpoint or zoo name (its model, weights and vocabulary; fine-tuning)."
    ),
    recipe: Optional[str] = typer.Option(None, help=_RECIPE_HELP),
    steps: Optional[int] = typer.Option(None, help="Training steps (overrides the recipe)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (overrides the recipe)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (overrides the recipe)."),
    optimizer: Optional[str] = typer.Option(None, help="sgd or adamw (overrides the recipe)."),
    mods_per_source: Optional[int] = typer.Option(
        None, help="Different texts of one source in a batch (default: the dataset's; css and mitstates: 2, as google/tirg)."
    ),
    seed: int = typer.Option(0, help="Random seed of the model and the batches."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes (default: 0 on the CPU, up to 4 on CUDA)."),
    save_every: Optional[int] = typer.Option(None, help="Steps between resumable states (default 500; 0: only at the end and on Ctrl-C)."),
    eval_every: Optional[int] = typer.Option(None, help="Steps between validations; the best model is kept as best.safetensors."),
    val_pairs: Optional[int] = typer.Option(None, help="Training pairs held out for validation when the dataset has no split (default: a tenth, at most 500)."),
    resume: Optional[Path] = typer.Option(None, help="Continue this run directory from its last saved state, with its recorded config."),
    fp32: bool = typer.Option(False, "--fp32", help="Float32 throughout on CUDA (default: bfloat16 autocast)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model's training forward."),
    tensorboard: bool = typer.Option(False, help='TensorBoard events in RUN_DIR/tensorboard (pip install "compose-retrieval[tensorboard]").'),
    run_dir: Optional[Path] = typer.Option(None, help="Where the config, metrics and checkpoint go (default runs/NAME-TIME)."),
    combiner_opt: Optional[List[str]] = typer.Option(None, help="Combiner option KEY=VALUE (repeatable; see `info combiner NAME`)."),
    image_encoder_opt: Optional[List[str]] = typer.Option(None, help="Image encoder option KEY=VALUE (repeatable)."),
    text_encoder_opt: Optional[List[str]] = typer.Option(None, help="Text encoder option KEY=VALUE (repeatable)."),
    loss_opt: Optional[List[str]] = typer.Option(None, help="Loss option KEY=VALUE (repeatable)."),
    dataset_opt: Optional[List[str]] = typer.Option(None, help="Dataset option KEY=VALUE (repeatable)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a model and evaluate recall@K on the dataset's test protocol (or continue a saved run: --resume RUN_DIR).

    Under torchrun (``torchrun --nproc-per-node N -m compose_retrieval train ...``) every process runs it; they train
    as one with the global --batch-size, rank 0 alone prints and writes, and the default run directory is rank 0's.
    """
    from .. import distributed
    from ..config import make_config
    from ..devices import resolve_device
    from ..rundir import new_run_dir
    from ..training import resume as resume_training
    from ..training import train as run_training

    if not distributed.is_main():  # one process prints; an error is printed by the process it happened in
        console.quiet = True
    with errors_as_exit(), _said_by_rank_0():
        if resume is not None:
            given = [name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
            changes = {"device": device, "num_workers": workers, "save_every": save_every, "tensorboard": tensorboard or None,
                       "compile": compile_model or None}
            allowed = {"device", "workers", "save_every", "tensorboard", "compile_model", "progress", "resume"}
            refused = [f"--{name.replace('_', '-')}" for name in given if name not in allowed]
            if refused:
                raise OptionError(f"--resume continues {resume} with the config it recorded; drop {', '.join(refused)} "
                                  "(only --device, --workers, --save-every, --tensorboard, --compile may change)")
            console.print(f"resuming [bold]{resume}[/]")
            result = resume_training(resume, progress=progress,
                                     **{k: v for k, v in changes.items() if k != "device" or "device" in given})
            what = result.config.model.combiner.name
            print_metrics(result.metrics, f"{what} on {result.config.dataset}")
            console.print(f"run directory: {result.run_dir}")
            return
        config = make_config(
            recipe,
            combiner=combiner,
            combiner_options=parse_options(combiner_opt, "combiner"),
            image_encoder=image_encoder,
            image_encoder_options=parse_options(image_encoder_opt, "image encoder"),
            backbone=backbone,
            pretrained=pretrained,
            text_encoder=text_encoder,
            text_encoder_options=parse_options(text_encoder_opt, "text encoder"),
            embed_dim=embed_dim,
            init_from=init_from,
            dataset=dataset,
            dataset_options=parse_options(dataset_opt, "dataset"),
            loss=loss,
            loss_options=parse_options(loss_opt, "loss"),
            data_root=data_root,
            protocol=protocol,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            mods_per_source=mods_per_source,
            seed=seed,
            device=device,
            num_workers=workers,
            save_every=save_every,
            eval_every=eval_every,
            val_pairs=val_pairs,
            amp=False if fp32 else None,
            compile=compile_model or None,
            tensorboard=tensorboard or None,
            run_dir=str(run_dir) if run_dir else None,
        )
        config.validate()
        what = Path(init_from).stem if init_from else config.model.combiner.name
        made = run_dir is None
        # under torchrun the processes join here, so that they share the run directory rank 0 names
        with distributed.session(distributed.device_for(resolve_device(config.device))):
            if made:  # a new folder of its own, even when runs start in the same second
                run_dir = distributed.on_main(lambda: new_run_dir("runs", f"{what}-{config.dataset}".replace(":", "_")))
                config = dataclasses.replace(config, run_dir=str(run_dir))
            console.print(f"training [bold]{what}[/] on [bold]{config.dataset}[/] for {config.steps} steps "
                          f"({config.recipe} recipe) -> {run_dir}"
                          + (f" on {distributed.world_size()} processes" if distributed.active() else ""), soft_wrap=True)
            try:
                result = run_training(config, progress=progress)
            except BaseException:
                if made and distributed.is_main() and run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()  # a run that saved nothing leaves no folder
                raise
    print_metrics(result.metrics, f"{what} on {config.dataset}")
    console.print(f"run directory: {result.run_dir}")


@contextlib.contextmanager
def _said_by_rank_0() -> Iterator[None]:
    """Under torchrun, an error that every process raises (a copy of rank 0's, a shared divergence, an agreed Ctrl-C)
    is printed by rank 0 alone; the others exit 1 in silence."""
    from .. import distributed

    try:
        yield
    except Exception as exc:
        if not distributed.is_main() and distributed.raised_everywhere(exc):
            raise typer.Exit(1) from None
        raise


@app.command()
def compare(
    combiners: Optional[List[str]] = typer.Option(None, "--combiner", help="Combiners to compare (repeatable; default: all)."),
    seeds: int = typer.Option(1, help="Seeds 0..N-1 for every combiner."),
    seeds_for: Optional[List[str]] = typer.Option(None, help="More seeds for some combiners: NAME=N (repeatable)."),
    dataset: Optional[str] = typer.Option(None, help="Training and test data (see `list datasets`; default: the recipe's)."),
    data_root: Optional[str] = typer.Option(None, help="Where the dataset's files are (not for generated datasets)."),
    dataset_opt: Optional[List[str]] = typer.Option(None, help="Dataset option KEY=VALUE (repeatable)."),
    recipe: Optional[str] = typer.Option(None, help="Training recipe shared by every run (see `list recipes`)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (overrides the recipe)."),
    mods_per_source: Optional[int] = typer.Option(None, help="Different texts of one source in a batch (default: the dataset's)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
    out: Path = typer.Option(Path("runs/compare"), help="Run directories and comparison.md / comparison.csv go here."),
) -> None:
    """Train every combiner with one recipe and the same seeds; write one table (Markdown and CSV)."""
    from ..compare import run_comparison, write_tables
    from ..config import make_config

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
        base = make_config(
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
