"""Shared fixtures and helpers: tiny models, tiny data, and a sandbox for plugin tests.

Everything here is sized for a shared 2-core CPU: the timm model ``test_resnet``,
32-dim embeddings, a 16-dim LSTM, 32 px css-synthetic images and a few dozen steps.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import compose_retrieval
from compose_retrieval.model import ComponentSpec, ModelSpec
from compose_retrieval.config import TrainConfig

# PyTorch's intra-op thread pool spins badly when another process holds one of the two
# cores (a training step goes from 0.04 s to 3 s); one thread keeps the suite fast.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN_DIR = REPO_ROOT / "examples" / "plugin-example"

EMBED_DIM = 32
TINY_IMAGE_ENCODER = ComponentSpec("timm", {"model_name": "test_resnet"})
TINY_TEXT_ENCODER_OPTIONS = {"word_dim": 16, "hidden_dim": 16}
TINY_DATASET = {"train_scenes": 48, "test_scenes": 16, "mods_per_scene": 2, "image_size": 32}
BUILTIN_COMBINERS = [
    "attribute_operator", "concat", "film", "image_only", "mrn", "param_hashing",
    "relationship", "show_and_tell", "text_only", "tirg", "tirg_lastconv",
]

SAMPLE_TEXTS = [
    "add small red circle to top-left",
    "remove blue triangle",
    "make gray rectangle at middle-center large",
    "turn green circle into a triangle",
    "make yellow triangle cyan",
]


# `compose-retrieval train` arguments for a tiny CPU run (add a dataset's own)
TINY_CLI_MODEL = [
    "--steps", "3", "--batch-size", "8", "--backbone", "test_resnet", "--embed-dim", "32",
    "--text-encoder-opt", "word_dim=16", "--text-encoder-opt", "hidden_dim=16",
    "--device", "cpu", "--no-progress",
]


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit 1, no traceback (CliRunner would hold the exception), one line on stderr naming the problem."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]
    return lines[0]


def invoke(*args: Any):
    """The CLI through typer's CliRunner, in a wide terminal so that rich tables never wrap a name."""
    from typer.testing import CliRunner

    from compose_retrieval.cli import add_plugin_commands, app

    add_plugin_commands()  # as the console script's main() does
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def tiny_spec(combiner: str = "tirg", **combiner_options: Any) -> ModelSpec:
    """A ModelSpec with the tiny encoders of this suite."""
    return ModelSpec(
        combiner=ComponentSpec(combiner, dict(combiner_options)),
        image_encoder=ComponentSpec(TINY_IMAGE_ENCODER.name, dict(TINY_IMAGE_ENCODER.options)),
        text_encoder=ComponentSpec("lstm", dict(TINY_TEXT_ENCODER_OPTIONS)),
        embed_dim=EMBED_DIM,
    )


def tiny_model(combiner: str = "tirg", **combiner_options: Any):
    """A freshly initialised tiny model whose text encoder is fitted on SAMPLE_TEXTS."""
    model = compose_retrieval.build_model(tiny_spec(combiner, **combiner_options))
    model.text_encoder.fit(SAMPLE_TEXTS)
    return model


def tiny_config(**overrides: Any) -> TrainConfig:
    """A TrainConfig for a short CPU run of tirg on tiny css-synthetic data."""
    values: dict[str, Any] = dict(
        model=tiny_spec(),
        dataset="css-synthetic",
        dataset_options=dict(TINY_DATASET),
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.0,
        batch_size=8,
        steps=30,
        log_every=10,
        device="cpu",
        eval_batch_size=64,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def write_dist_info(root: Path, dist_name: str, version: str, entry_points: str) -> Path:
    """Make a fake installed distribution under ``root`` that importlib.metadata can see."""
    dist_info = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(entry_points)
    return dist_info


@contextlib.contextmanager
def plugin_paths(*paths: Path):
    """Put ``paths`` on sys.path and re-read the entry points; restore both afterwards."""
    mp = pytest.MonkeyPatch()
    modules_before = set(sys.modules)
    try:
        for p in paths:
            mp.syspath_prepend(str(p))  # also invalidates the import caches
        compose_retrieval.reload_plugins()
        yield
    finally:
        mp.undo()
        for name in set(sys.modules) - modules_before:
            if name.startswith(("broken_plugin", "compose_retrieval_example")):
                del sys.modules[name]
        compose_retrieval.reload_plugins()


@pytest.fixture
def clean_registry():
    """Whatever a test registers in-process, later tests see the normal registry."""
    compose_retrieval.reload_plugins()
    yield
    compose_retrieval.reload_plugins()


@pytest.fixture(scope="session")
def tiny_dataset():
    """One css-synthetic dataset with the tiny options, shared by the session (read-only)."""
    return compose_retrieval.create("dataset", "css-synthetic", **TINY_DATASET)


def assert_workers_give_valid_pairs(train: torch.utils.data.Dataset, workers: int = 2) -> None:
    """An epoch through ``workers`` DataLoader processes yields each training pair once, intact, and a seed repeats it."""

    def epoch():
        loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, num_workers=workers,
                                             generator=torch.Generator().manual_seed(5))
        return [(text, source, target) for b in loader for text, source, target in zip(b["text"], b["source"], b["target"])]

    first, second = epoch(), epoch()
    assert len(first) == len(train)
    assert all(t1 == t2 and torch.equal(s1, s2) and torch.equal(g1, g2) for (t1, s1, g1), (t2, s2, g2) in zip(first, second))
    key = [train.images[i].numpy().tobytes() for i in range(len(train.images))]  # pixels identify an image
    source_key = [train.source_images[i].numpy().tobytes() for i in range(len(train.source_images))]
    pairs = sorted((text, source_key[s], key[t]) for s, text, t in map(train.triplet, range(len(train))))
    assert sorted((text, s.numpy().tobytes(), t.numpy().tobytes()) for text, s, t in first) == pairs  # every pair, once
