"""`compose-retrieval evaluate`."""

from __future__ import annotations

import json
from typing import Optional

import typer

from .common import app, errors_as_exit, print_metrics

__all__ = ["evaluate"]


@app.command()
def evaluate(
    path: str = typer.Argument(..., help="A run directory, a checkpoint (.safetensors) file or a zoo name."),
    data_root: Optional[str] = typer.Option(None, help="Where the dataset's files are (a checkpoint never chooses them; not for css-synthetic)."),
    protocol: Optional[str] = typer.Option(None, help="Test protocol (default: the one the model was evaluated on)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
    batch_size: int = typer.Option(256, help="Images per forward pass."),
    workers: int = typer.Option(0, help="DataLoader processes decoding images (helps with image files, not in-memory data)."),
    ranking_backend: str = typer.Option("torch", help="torch (exact, chunked) or faiss (exact FAISS index; pip install \"compose-retrieval[faiss]\")."),
    json_output: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Evaluate a saved model on the test protocol of the dataset it was trained on."""
    from ..evaluation import evaluate_checkpoint

    with errors_as_exit():
        metrics = evaluate_checkpoint(path, data_root=data_root, protocol=protocol, device=device, batch_size=batch_size,
                                      num_workers=workers, ranking_backend=ranking_backend)
    if json_output:
        typer.echo(json.dumps(metrics))
    else:
        print_metrics(metrics, str(path))
