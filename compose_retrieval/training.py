"""One training loop for every combiner, encoder, loss and dataset."""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from . import registry
from .batching import endless, training_loader
from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .config import TrainConfig, recipe_of
from .devices import resolve_device, seed_everything
from .errors import ComposeRetrievalError, DatasetError, OptionError
from .evaluation import evaluate
from .model import ComposedRetrievalModel, build_model
from .optim import make_optimizer, make_scheduler
from .progress import TrainingProgress
from .rundir import CHECKPOINT_NAME, MetricsLog, claim_run_dir
from .zoo import resolve

__all__ = ["TrainResult", "train", "check_finite"]


@dataclass
class TrainResult:
    model: ComposedRetrievalModel
    metrics: dict[str, Any]
    run_dir: Path | None
    config: TrainConfig


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``, evaluate it, save it in ``config.run_dir``.

    A run that stops before it has saved a model (a bad option met late, a divergence,
    Ctrl-C) removes the files it wrote, so the same ``--run-dir`` can be used again.
    """
    config.validate()
    run_dir = Path(config.run_dir) if config.run_dir else None
    if run_dir:
        claim_run_dir(run_dir, config)
    try:
        return _train(config, run_dir, progress, on_log)
    except BaseException:
        if run_dir and not (run_dir / CHECKPOINT_NAME).exists():
            for name in ("config.json", "metrics.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
        raise


def _train(config: TrainConfig, run_dir: Path | None, progress: bool, on_log) -> TrainResult:
    seed_everything(config.seed)
    device = resolve_device(config.device)

    dataset = registry.create("dataset", config.dataset, data_root=config.data_root, **config.dataset_options)
    loss_name = config.loss or dataset.default_loss
    if loss_name is None:
        raise OptionError(f"dataset {config.dataset!r} names no default loss; choose one with --loss (see `compose-retrieval list losses`)")
    config = replace(config, loss=loss_name, mods_per_source=config.mods_per_source or getattr(dataset, "mods_per_source", 1))
    if config.init_from:
        model, _ = load_checkpoint(resolve(config.init_from))
        model.preprocessing = dataset.preprocessing
        config = replace(config, model=model.spec)  # the model is the checkpoint's, vocabulary included
    else:
        model = build_model(config.model, dataset.preprocessing)
        model.text_encoder.fit(dataset.train_texts())
    if run_dir:  # the resolved config (the loss the dataset chose, the model of --init-from)
        atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config.to_dict(), indent=2)))
    loss_fn = registry.create("loss", loss_name, **config.loss_options)
    protocol = dataset.protocol(config.protocol)

    model.place(device).train()
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)

    loader = training_loader(dataset.train_set(seed=config.seed, protocol=protocol.name), config, device)
    log = MetricsLog(run_dir)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")

    started = time.perf_counter()
    running = 0.0
    with TrainingProgress(config.steps, enabled=progress) as bar:
        batches = endless(loader)
        for step in range(config.steps):
            batch = next(batches)
            lr = scheduler.get_last_lr()[0] / optimizer.param_groups[0]["lr_scale"]
            sources = batch["source"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            targets = batch["target"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with autocast:
                queries, target_embeddings = model(sources, batch["text"], targets)
                loss = loss_fn(queries.float(), target_embeddings.float())
            value = loss.item()  # the step's one host sync
            if not math.isfinite(value):
                raise ComposeRetrievalError(
                    f"training diverged: the loss became {value} at step {step + 1}; lower --lr (nothing was saved)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += value
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                n = done % config.log_every or config.log_every
                elapsed = time.perf_counter() - started
                record = {"step": done, "loss": running / n, "lr": lr, "seconds": round(elapsed, 2),
                          "images_per_second": round(done * config.batch_size * 2 / elapsed, 1)}
                running = 0.0
                log.write(record)
                if on_log:
                    on_log(record)
            bar.advance(value, config.batch_size * 2)
    train_seconds = time.perf_counter() - started
    check_finite(model, f"after {config.steps} steps")

    # the model is saved before it is evaluated: an evaluation that fails (a broken gallery image) loses nothing
    recipe = {**recipe_of(config), "protocol": protocol.name}
    metrics: dict[str, Any] = {"step": config.steps, "train_seconds": train_seconds}
    if dataset.skipped_images:
        metrics["skipped_images"] = dataset.skipped_images
    checkpoint = run_dir / CHECKPOINT_NAME if run_dir else None
    if checkpoint:
        save_checkpoint(model, checkpoint, metrics=metrics, recipe=recipe)
    try:
        metrics = {**evaluate(model, protocol, batch_size=config.eval_batch_size, device=device, num_workers=config.num_workers), **metrics}
    except Exception as exc:
        if checkpoint:
            kind = DatasetError if isinstance(exc, DatasetError) else ComposeRetrievalError
            # the command must be one that works: a checkpoint never chooses the data root, so it is given again
            command = shlex.join(["compose-retrieval", "evaluate", str(run_dir)]
                                 + (["--data-root", str(config.data_root)] if config.data_root is not None else []))
            raise kind(f"evaluation failed: {_first_line(exc)} (the trained model is saved: {checkpoint}; "
                       f"evaluate it with `{command}` once that is fixed)") from exc
        raise
    metrics["eval_seconds"] = round(time.perf_counter() - started - train_seconds, 1)
    log.write({"eval": metrics})
    if checkpoint:
        save_checkpoint(model, checkpoint, metrics=metrics, recipe=recipe)
    model.eval()
    return TrainResult(model, metrics, run_dir, config)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if isinstance(exc, DatasetError) and text else (text.splitlines()[0] if text else type(exc).__name__)


def check_finite(model: torch.nn.Module, when: str) -> None:
    """A model whose weights hold nan or inf is an error, not a result: training diverged."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ComposeRetrievalError(
            f"training diverged: {len(bad)} weight tensor(s) hold nan or inf {when} (first: {bad[0]}); "
            "lower --lr (nothing was saved)"
        )
