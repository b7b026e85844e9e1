"""The optimizer and the learning-rate schedule of a run (torch.optim and torch.optim.lr_scheduler)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.optim import lr_scheduler

if TYPE_CHECKING:
    from .config import TrainConfig
    from .model import ComposedRetrievalModel

__all__ = ["make_optimizer", "make_scheduler"]


def make_optimizer(model: "ComposedRetrievalModel", config: "TrainConfig") -> torch.optim.Optimizer:
    body = model.image_encoder.backbone()
    body_params = {id(p) for p in body.parameters()} if body is not None else set()
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad and id(p) not in body_params], "lr_scale": 1.0},
        {"params": [p for p in model.parameters() if p.requires_grad and id(p) in body_params], "lr_scale": config.backbone_lr_scale},
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = config.lr * g["lr_scale"]  # the schedule scales each group's own rate
    # One fused kernel for all parameters instead of a Python loop over them: on a CPU
    # the loop costs as much as a small combiner (benchmarks/RESULTS.md).
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **fused)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, **fused)


def make_scheduler(optimizer: torch.optim.Optimizer, config: "TrainConfig") -> lr_scheduler.LRScheduler:
    """The schedule of ``config``, stepped once after every optimizer step.

    A linear warm-up over ``warmup_steps`` (step i at (i + 1) / warmup_steps of the rate),
    then "cosine" (to 0 at the last step) or "step" (x ``lr_decay`` every ``lr_decay_every``
    steps after the warm-up; 0: constant). Its ``state_dict`` resumes it exactly.
    """
    warmup = config.warmup_steps
    if config.lr_schedule == "cosine":
        main: lr_scheduler.LRScheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.steps - warmup, 1))
    elif config.lr_decay_every:
        main = lr_scheduler.StepLR(optimizer, step_size=config.lr_decay_every, gamma=config.lr_decay)
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1))
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
