"""The learning-rate schedule comes from torch.optim.lr_scheduler: equal, step by step, to the rule written out."""

from __future__ import annotations

import math

import pytest
import torch

from compose_retrieval.optim import make_scheduler

from conftest import tiny_config


def naive_lr(config, step: int) -> float:
    """The schedule as the docs state it: linear warm-up ((i + 1) / warmup_steps), then cosine to 0 at the last
    step or x lr_decay every lr_decay_every steps after the warm-up."""
    after = step - config.warmup_steps
    if after < 0:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(config.steps - config.warmup_steps, 1)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(after / span, 1.0)))
    return config.lr * (config.lr_decay ** (after // config.lr_decay_every) if config.lr_decay_every else 1.0)


def rates(config, steps: int | None = None) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [parameter], "lr": config.lr * 0.1}, {"params": [], "lr": config.lr}], lr=config.lr)
    scheduler = make_scheduler(optimizer, config)
    seen = []
    for _ in range(steps or config.steps):
        seen.append(optimizer.param_groups[1]["lr"])
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * seen[-1], rel=1e-12)  # each group keeps its scale
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("settings", [
    dict(lr_schedule="cosine", steps=1200, warmup_steps=50, lr=1e-3),         # the cpu recipe
    dict(lr_schedule="step", steps=3000, lr_decay_every=1000, lr_decay=0.1),  # the paper recipe, shortened
    dict(lr_schedule="cosine", steps=100, warmup_steps=0),
    dict(lr_schedule="cosine", steps=30, warmup_steps=1),
    dict(lr_schedule="step", steps=40, warmup_steps=5, lr_decay_every=10, lr_decay=0.5),
    dict(lr_schedule="step", steps=20, lr_decay_every=0),
])
def test_the_schedule_equals_the_rule(settings):
    config = tiny_config(**settings)
    for step, rate in enumerate(rates(config)):
        assert rate == pytest.approx(naive_lr(config, step), rel=1e-9, abs=1e-15), step


def test_a_schedule_resumes_from_its_state_dict():
    config = tiny_config(lr_schedule="cosine", steps=60, warmup_steps=10)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=config.lr)
    scheduler = make_scheduler(optimizer, config)
    for _ in range(25):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    fresh = make_scheduler(fresh_optimizer, config)
    fresh.load_state_dict(state)
    fresh_optimizer.param_groups[0]["lr"] = optimizer.param_groups[0]["lr"]  # an optimizer's state_dict carries it
    for step in range(25, 60):
        assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(naive_lr(config, step), rel=1e-9, abs=1e-15)
        fresh_optimizer.step()
        fresh.step()
