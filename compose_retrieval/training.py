"""One training loop for every combiner, encoder, loss and dataset."""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import random
import shlex
import time
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
import torch

from . import registry
from .checkpoint import atomic_write, save_checkpoint
from .batching import endless, training_loader
from .devices import resolve_device, seed_everything
from .errors import ComposeRetrievalError, DatasetError, OptionError, UnknownNameError
from .evaluation import evaluate
from .model import ComponentSpec, ComposedRetrievalModel, ModelSpec, build_model
from .options import Range, check_value

CHECKPOINT_NAME = "model.safetensors"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
# TrainConfig fields that say where or how fast a run went, not what it learned: left out of a checkpoint's recipe.
_NOT_RECIPE = {"model", "run_dir", "device", "num_workers", "eval_batch_size", "log_every"}

# Named training recipes. "paper" is google/tirg's default (the loss left to the dataset,
# as in the paper). "cpu" is sized so that the default command trains a useful model on
# a 2-core laptop in under 10 minutes: AdamW with a cosine schedule and the batch softmax
# loss learn far more per step than SGD with the soft triplet (benchmarks/RESULTS.md).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(
        optimizer="sgd", lr=1e-2, momentum=0.9, weight_decay=1e-6, batch_size=32, steps=160_000,
        lr_schedule="step", lr_decay_every=50_000, lr_decay=0.1, warmup_steps=0, loss=None,
    ),
    "cpu": dict(
        optimizer="adamw", lr=1e-3, weight_decay=1e-6, batch_size=32, steps=1200,
        lr_schedule="cosine", warmup_steps=50, loss="batch_softmax",
    ),
}
# The timm backbone of each recipe, unless the user names one: the CPU recipe uses
# ResNet-18 at half width (3x faster a step on a CPU, better recall in the same minutes).
RECIPE_BACKBONES: dict[str, dict[str, Any]] = {
    "paper": {"model_name": "resnet18"},
    "cpu": {"model_name": "resnet18", "model_kwargs": {"channels": [32, 64, 128, 256]}},
}
# How a recipe initialises its backbone, whatever its width. The paper recipe starts ResNet-18
# as torchvision (google/tirg's backbone) does: the last BatchNorm of each residual block at
# weight 1. timm zeroes it by default (zero_init_last), so every block starts as the identity;
# from random initialisation that cost 12 points of recall@1 at 1,000 steps on CSS-style
# data (benchmarks/RESULTS.md, section 6: parity with google/tirg).
RECIPE_BACKBONE_INIT: dict[str, dict[str, Any]] = {
    "paper": {"zero_init_last": False},
}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as config.json in the run directory."""

    model: ModelSpec = field(default_factory=ModelSpec)
    init_from: str | None = None  # a checkpoint or zoo name: the model (spec, weights, vocabulary) starts as that one
    dataset: str = "css-synthetic"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    protocol: str | None = None
    loss: str | None = None  # None: the dataset's default loss
    loss_options: dict[str, Any] = field(default_factory=dict)
    # different texts of one source in a batch (None: the dataset's default; css and mitstates: 2, as google/tirg)
    mods_per_source: Annotated[int, Range(1, 1024)] | None = None
    recipe: str | None = None  # the named recipe these values came from (from_recipe), if any
    optimizer: str = "sgd"
    lr: Annotated[float, Range(0, None)] = 1e-2
    momentum: Annotated[float, Range(0, 1)] = 0.9
    weight_decay: Annotated[float, Range(0, None)] = 1e-6
    batch_size: Annotated[int, Range(2, 1_000_000)] = 32  # the other items of a batch are the negatives
    steps: Annotated[int, Range(1, None)] = 700
    lr_schedule: str = "step"  # "step": x lr_decay every lr_decay_every steps; "cosine": to 0 at the last step
    lr_decay_every: Annotated[int, Range(0, None)] = 0  # 0: no step decay
    lr_decay: Annotated[float, Range(0, 1)] = 0.1
    warmup_steps: Annotated[int, Range(0, None)] = 0  # linear warm-up from 0
    backbone_lr_scale: Annotated[float, Range(0, None)] = 1.0  # learning-rate factor of the image encoder's pretrained body
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # numpy's seeds are 32-bit
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on the CPU
    num_workers: Annotated[int, Range(0, 1024)] = 0
    eval_batch_size: Annotated[int, Range(1, None)] = 256
    log_every: Annotated[int, Range(1, None)] = 25
    run_dir: str | None = None

    @classmethod
    def from_recipe(cls, recipe: str = "cpu", **overrides: Any) -> "TrainConfig":
        """A config with ``recipe``'s values (and backbone, unless ``model`` is given), then ``overrides``.

        Overrides that are None are ignored.
        """
        check_recipe(recipe)
        values = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
        values.setdefault("model", ModelSpec(image_encoder=ComponentSpec("timm", recipe_backbone(recipe))))
        return cls(recipe=recipe, **values)

    def validate(self) -> None:
        """Fail fast, before any data is generated, on a name that nothing registers or a value out of range."""
        hints = typing.get_type_hints(TrainConfig, include_extras=True)
        for f in fields(self):
            if f.name not in ("model", "dataset_options", "loss_options"):
                check_value("training", f.name, getattr(self, f.name), hints[f.name])
        registry.check_options("combiner", self.model.combiner.name, self.model.combiner.options)
        registry.check_options("image_encoder", self.model.image_encoder.name, self.model.image_encoder.options)
        registry.check_options("text_encoder", self.model.text_encoder.name, self.model.text_encoder.options)
        registry.check_options("dataset", self.dataset, self.dataset_options)
        if self.loss is not None:
            registry.check_options("loss", self.loss, self.loss_options)
        if self.lr_schedule not in SCHEDULES:
            raise UnknownNameError("lr schedule", self.lr_schedule, difflib.get_close_matches(self.lr_schedule, SCHEDULES), list(SCHEDULES))
        if self.optimizer not in OPTIMIZERS:
            raise UnknownNameError("optimizer", self.optimizer, difflib.get_close_matches(self.optimizer, OPTIMIZERS), list(OPTIMIZERS))
        if self.mods_per_source is not None and self.batch_size % self.mods_per_source:
            raise OptionError(f"--mods-per-source {self.mods_per_source} must divide --batch-size {self.batch_size}")
        resolve_device(self.device)
        if self.run_dir is not None and Path(self.run_dir).exists() and not Path(self.run_dir).is_dir():
            raise ComposeRetrievalError(f"--run-dir {self.run_dir} is a file, not a folder; choose a new folder for the run")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["model"] = ModelSpec.from_dict(d.get("model", {}))
        return cls(**d)


@dataclass
class TrainResult:
    model: ComposedRetrievalModel
    metrics: dict[str, Any]
    run_dir: Path | None
    config: TrainConfig


def check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise UnknownNameError("recipe", recipe, difflib.get_close_matches(recipe, RECIPES), sorted(RECIPES))


def recipe_backbone(recipe: str, pretrained: bool = False, model_name: str | None = None) -> dict[str, Any]:
    """The timm image-encoder options of a recipe, or of the backbone ``model_name`` under it.

    A named backbone has timm's default width; it keeps the recipe's initialisation when it
    is the recipe's own model. ImageNet weights exist for the full width only, so
    ``pretrained`` drops the cpu recipe's narrow channels.
    """
    check_recipe(recipe)
    default = RECIPE_BACKBONES[recipe]
    name = model_name or default["model_name"]
    kwargs = dict(default.get("model_kwargs", {})) if model_name is None and not pretrained else {}
    if name == default["model_name"]:
        kwargs.update(RECIPE_BACKBONE_INIT.get(recipe, {}))
    options: dict[str, Any] = {"model_name": name}
    if pretrained:
        options["pretrained"] = True
    if kwargs:
        options["model_kwargs"] = json.loads(json.dumps(kwargs))
    return options


def new_run_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new, empty folder ``parent/name-YYYYmmdd-HHMMSS`` (with -2, -3, ... when runs start in the same second)."""
    base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()  # exclusive: two runs never share one folder
            return candidate
        except FileExistsError:
            continue
    raise ComposeRetrievalError(f"cannot find a free run directory next to {base}; give --run-dir")


def claim_run_dir(run_dir: Path, config: "TrainConfig") -> None:
    """Make ``run_dir`` this run's: it must be new or empty, and config.json is created exclusively in it,
    so a second run given the same folder stops instead of overwriting the first."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ComposeRetrievalError(f"--run-dir {run_dir} is a file, not a folder; choose a new folder for the run")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        what = ("holds a trained model" if (run_dir / CHECKPOINT_NAME).exists()
                else "holds another run's files" if (run_dir / "config.json").exists() else "is not empty")
        raise ComposeRetrievalError(f"run directory {run_dir} {what}; choose a new --run-dir (nothing in it was changed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config.to_dict(), indent=2)), exclusive=True)
    except FileExistsError:
        raise ComposeRetrievalError(f"run directory {run_dir} was just taken by another run; choose a new --run-dir") from None


def recipe_of(config: TrainConfig) -> dict[str, Any]:
    """What a run learned from (JSON values): the config without where or how fast it ran."""
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in _NOT_RECIPE}))


def make_optimizer(model: ComposedRetrievalModel, config: TrainConfig) -> torch.optim.Optimizer:
    body = model.image_encoder.backbone()
    body_params = {id(p) for p in body.parameters()} if body is not None else set()
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad and id(p) not in body_params], "lr_scale": 1.0},
        {"params": [p for p in model.parameters() if p.requires_grad and id(p) in body_params], "lr_scale": config.backbone_lr_scale},
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = config.lr * g["lr_scale"]
    # One fused kernel for all parameters instead of a Python loop over them: on a CPU
    # the loop costs as much as a small combiner (benchmarks/RESULTS.md).
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **fused)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, **fused)


def lr_at(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based) under the config's schedule and warm-up."""
    if config.lr_schedule == "cosine":
        span = max(config.steps - config.warmup_steps, 1)
        factor = 0.5 * (1 + math.cos(math.pi * min(max(step - config.warmup_steps, 0) / span, 1.0)))
    else:
        factor = config.lr_decay ** (step // config.lr_decay_every) if config.lr_decay_every else 1.0
    if step < config.warmup_steps:
        factor *= (step + 1) / config.warmup_steps
    return config.lr * factor


def _set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> float:
    lr = lr_at(config, step)
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_scale"]
    return lr


class MetricsLog:
    """metrics.jsonl in the run directory: one JSON object a line, appended and flushed."""

    def __init__(self, run_dir: Path | None):
        self.path = run_dir / "metrics.jsonl" if run_dir else None
        if self.path:  # a run starts from step 0: the lines of an interrupted attempt are stale
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


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
    loss_name = config.loss or dataset.default_loss or "soft_triplet"  # TODO recipe
    config = replace(config, loss=loss_name, mods_per_source=config.mods_per_source or getattr(dataset, "mods_per_source", 1))
    if config.init_from:
        from .checkpoint import load_checkpoint
        from .zoo import resolve

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

    loader = training_loader(dataset.train_set(seed=config.seed, protocol=protocol.name), config, device)
    log = MetricsLog(run_dir)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")

    from .progress import TrainingProgress

    started = time.perf_counter()
    running = 0.0
    with TrainingProgress(config.steps, enabled=progress) as bar:
        batches = endless(loader)
        for step in range(config.steps):
            batch = next(batches)
            lr = _set_lr(optimizer, config, step)
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
    checkpoint = run_dir / CHECKPOINT_NAME if run_dir else None
    if checkpoint:
        save_checkpoint(model, checkpoint, metrics=metrics, recipe=recipe)
    try:
        metrics = {**evaluate(model, protocol, batch_size=config.eval_batch_size, device=device), **metrics}
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
