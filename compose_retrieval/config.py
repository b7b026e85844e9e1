"""What a training run depends on (TrainConfig), and the one function that assembles it from a user's choices.

``make_config`` takes the same inputs as ``compose-retrieval train`` (the CLI calls it), so
the command line and the Python API cannot disagree: what the user leaves out comes from
the recipe (the default recipe when none is named).
"""

from __future__ import annotations

import copy
import difflib
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from . import registry
from .devices import resolve_device
from .errors import ComposeRetrievalError, OptionError, UnknownNameError
from .model import ComponentSpec, ModelSpec
from .options import Range, check_value
from .recipes import get_recipe

__all__ = ["TrainConfig", "make_config", "recipe_of", "OPTIMIZERS", "SCHEDULES", "RESUMABLE_CHANGES"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
# TrainConfig fields that say where or how fast a run went, not what it learned: left out of a checkpoint's recipe.
_NOT_RECIPE = {"model", "run_dir", "device", "num_workers", "eval_batch_size", "log_every", "save_every", "tensorboard",
               "compile"}
# what a resumed run may change: where and how fast it runs, and how it reports
RESUMABLE_CHANGES = ("device", "num_workers", "eval_batch_size", "log_every", "save_every", "tensorboard", "compile")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as config.json in the run directory.

    Build one with ``make_config`` (the recipe fills in what is left out); the values
    below are the engine's own defaults for a config written out by hand.
    """

    model: ModelSpec
    dataset: str
    init_from: str | None = None  # a checkpoint or zoo name: the model (spec, weights, vocabulary) starts as that one
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    protocol: str | None = None
    loss: str | None = None  # None: the dataset's default loss
    loss_options: dict[str, Any] = field(default_factory=dict)
    # different texts of one source in a batch (None: the dataset's default; css and mitstates: 2, as google/tirg)
    mods_per_source: Annotated[int, Range(1, 1024)] | None = None
    recipe: str | None = None  # the named recipe these values came from (make_config), if any
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
    amp: bool = True  # bfloat16 autocast on CUDA (False: float32 throughout); ignored on the CPU
    compile: bool = False  # torch.compile the model's training forward
    num_workers: Annotated[int, Range(0, 1024)] | None = None  # None: 0 on the CPU, up to 4 on CUDA
    save_every: Annotated[int, Range(0, None)] = 500  # steps between resumable states (0: only at the end and on Ctrl-C)
    eval_every: Annotated[int, Range(0, None)] = 0  # steps between validations (0: none); the best model is kept
    val_pairs: Annotated[int, Range(1, None)] | None = None  # training pairs held out for validation (None: a tenth, at most 500)
    tensorboard: bool = False  # TensorBoard events in RUN_DIR/tensorboard (pip install "compose-retrieval[tensorboard]")
    eval_batch_size: Annotated[int, Range(1, None)] = 256
    log_every: Annotated[int, Range(1, None)] = 25
    run_dir: str | None = None

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


def recipe_of(config: TrainConfig) -> dict[str, Any]:
    """What a run learned from (JSON values): the config without where or how fast it ran."""
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in _NOT_RECIPE}))


_MODEL_CHOICES = ("combiner", "combiner_options", "image_encoder", "image_encoder_options", "backbone", "pretrained",
                  "text_encoder", "text_encoder_options", "embed_dim")
_SETTABLE = {f.name for f in fields(TrainConfig)} - {"model", "recipe", "init_from", "dataset", "dataset_options",
                                                      "loss", "loss_options"}


def make_config(
    recipe: str | None = None,
    *,
    combiner: str | None = None,
    combiner_options: dict[str, Any] | None = None,
    image_encoder: str | None = None,
    image_encoder_options: dict[str, Any] | None = None,
    backbone: str | None = None,
    pretrained: bool = False,
    text_encoder: str | None = None,
    text_encoder_options: dict[str, Any] | None = None,
    embed_dim: int | None = None,
    init_from: str | None = None,
    dataset: str | None = None,
    dataset_options: dict[str, Any] | None = None,
    loss: str | None = None,
    loss_options: dict[str, Any] | None = None,
    **training: Any,
) -> TrainConfig:
    """The TrainConfig of a run, from the choices ``compose-retrieval train`` takes.

    Everything left out (None) comes from ``recipe`` (the default recipe when None): its
    model, its dataset, its training values. ``backbone`` sets the image encoder's main
    option (timm's ``model_name``); ``pretrained`` starts it from ImageNet weights.
    ``init_from`` takes the whole model from a checkpoint, so it cannot be combined with
    a model choice. ``training``: any other TrainConfig field (steps, lr, batch_size,
    seed, device, data_root, run_dir, ...); None values are ignored. The loss is the one
    given, else the recipe's, else the dataset's ``default_loss``, else the recipe's
    ``fallback_loss``.
    """
    given = {k: v for k, v in locals().items() if k in _MODEL_CHOICES and v not in (None, False, {})}
    if init_from and given:
        raise OptionError(f"--init-from takes the model from the checkpoint; drop {', '.join('--' + k.replace('_', '-') for k in given)}")
    unknown = sorted(set(training) - _SETTABLE)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(_SETTABLE), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"make_config has no setting {unknown[0]!r}.{hint} Settings: {', '.join(sorted(_SETTABLE))}.")
    name, chosen = get_recipe(recipe)
    values = copy.deepcopy(chosen.training)
    bad = sorted(set(values) - _SETTABLE - {"loss"})
    if bad:
        raise OptionError(f"recipe {name!r} sets {', '.join(bad)}, which TrainConfig does not have")
    values.update({k: v for k, v in training.items() if v is not None})
    own = chosen.model
    model = ModelSpec(
        combiner=_component(own.combiner, combiner, combiner_options),
        image_encoder=_component(chosen.image_encoder(image_encoder, backbone, pretrained), None, image_encoder_options),
        text_encoder=_component(own.text_encoder, text_encoder, text_encoder_options),
        embed_dim=embed_dim if embed_dim is not None else own.embed_dim,
        normalization_scale=own.normalization_scale,
    )
    dataset = dataset or chosen.dataset
    loss = loss or values.pop("loss", None) or getattr(registry.get_entry("dataset", dataset).factory, "default_loss", None) \
        or chosen.fallback_loss
    values.pop("loss", None)
    return TrainConfig(
        model=model, dataset=dataset, init_from=init_from, dataset_options=dict(dataset_options or {}),
        loss=loss, loss_options=dict(loss_options or {}), recipe=name, **values,
    )


def _component(own: ComponentSpec, name: str | None, options: dict[str, Any] | None) -> ComponentSpec:
    """``name`` (default: the recipe's ``own``) with ``options`` over the recipe's options when it is the recipe's own."""
    name = name or own.name
    base = copy.deepcopy(own.options) if name == own.name else {}
    return ComponentSpec(name, {**base, **(options or {})})
