"""`compose-retrieval classify`: compositional classification with a trained composition model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from ..checkpoint import atomic_write
from .common import app, console, errors_as_exit

__all__ = ["classify", "classification_table"]

_COLUMNS = [  # (metric, heading)
    ("auc", "AUC"), ("best_hm", "best HM"), ("best_seen", "seen"), ("best_unseen", "unseen"),
    ("closed_acc", "closed"), ("attr_acc", "attr"), ("obj_acc", "obj"), ("acc", "acc (no bias)"),
]


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def classification_table(metrics: dict[str, Any], ks: list[int], title: str) -> Table:
    """The table `classify` prints: one row per top-k (and per top-k of chance, when measured), in %."""
    table = Table(title=title)
    table.add_column("", justify="left")
    for _, heading in _COLUMNS:
        table.add_column(heading, justify="right")
    rows = [("model", metrics)] + ([("chance", metrics["chance"])] if isinstance(metrics.get("chance"), dict) else [])
    for name, values in rows:
        for k in sorted({1, *ks}):
            suffix = "" if k == 1 else f"_top{k}"
            table.add_row(f"{name} top-{k}", *(_percent(values.get(key + suffix)) for key, _ in _COLUMNS))
    return table


@app.command()
def classify(
    path: str = typer.Argument(..., help="A run directory, a checkpoint (.safetensors) file or a zoo name."),
    data_root: Optional[str] = typer.Option(None, help="Where the dataset's files are (a checkpoint never chooses them)."),
    split: Optional[str] = typer.Option(None, help="The dataset's classification split (default: the protocol the model "
                                                   "was trained on when it is one, else the dataset's first)."),
    phase: str = typer.Option("test", help="The images to classify: val or test."),
    open_world: bool = typer.Option(False, "--open-world", help="Name images among every attribute x object pair (default: "
                                                                "the closed world, training pairs plus the phase's)."),
    scorer: str = typer.Option("auto", help="prototype (the engine's rule), native (the combiner's own) or auto."),
    topk: Optional[List[int]] = typer.Option(None, "--topk", help="Also report top-K metrics (repeatable; top-1 always)."),
    chance: int = typer.Option(0, "--chance", help="Add chance: the metrics of random scores, averaged over N draws."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
    batch_size: int = typer.Option(256, help="Images (and image-attribute compositions) per forward pass."),
    workers: int = typer.Option(0, help="DataLoader processes decoding images."),
    output: Optional[Path] = typer.Option(None, help="Write the metrics as JSON here (default for a run directory: "
                                                     "RUN_DIR/classification-SPLIT-PHASE-WORLD.json)."),
    json_output: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of the table."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Name images by their (attribute, object) pair, unseen pairs included: the field's closed/open-world metrics."""
    from ..composition import classify_checkpoint

    ks = sorted({1, *(topk or [])})
    with errors_as_exit():
        result = classify_checkpoint(path, data_root=data_root, split=split, phase=phase, open_world=open_world,
                                     scorer=scorer, ks=ks, device=device, batch_size=batch_size, num_workers=workers,
                                     progress=progress and not json_output, chance_draws=chance)
        metrics = result.metrics
        if output is None and Path(path).is_dir():
            output = Path(path) / f"classification-{metrics['split']}-{metrics['phase']}-{metrics['world']}.json"
        if output is not None:
            text = json.dumps(metrics, indent=2) + "\n"
            atomic_write(output, lambda tmp: Path(tmp).write_text(text))
    if json_output:
        typer.echo(json.dumps(metrics))
        return
    console.print(classification_table(metrics, ks, f"{metrics['task']}, {metrics['world']} world ({metrics['scorer']} scorer)"))
    counts = ", ".join(f"{k} {v:,}" for k, v in metrics.get("counts", {}).items())
    console.print(f"images: {metrics['images']:,} ({metrics['seen_images']:,} of seen pairs, {metrics['unseen_images']:,} "
                  f"of unseen); candidates: {metrics['pairs']:,} pairs ({metrics['seen_pairs']:,} seen); "
                  f"split images: {counts}" + (f"; pairs without prototype: {metrics['pairs_without_prototype']}"
                                               if metrics.get("pairs_without_prototype") else ""))
    if output is not None:
        console.print(f"wrote {output}")
