"""The training loop: the run directory, reproducibility, refusing to overwrite, and learning at all."""

from __future__ import annotations

import json
import math

import pytest
import torch

from compose_retrieval import ComponentSpec, ComposeRetrievalError, ModelSpec, UnknownNameError, build_model
from compose_retrieval.checkpoint import load_checkpoint, read_metadata
from compose_retrieval.evaluation import evaluate_checkpoint
from compose_retrieval.config import TrainConfig
from compose_retrieval.rundir import CHECKPOINT_NAME
from compose_retrieval.training import train

from conftest import TINY_DATASET, tiny_config, tiny_spec

RECALLS = [f"recall@{k}" for k in (1, 5, 10, 50, 100)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """30 steps of tirg on tiny css-synthetic data, into a fresh run directory."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    logged: list[dict] = []
    result = train(tiny_config(steps=30, log_every=10, run_dir=str(run_dir)), progress=False, on_log=logged.append)
    return result, run_dir, logged


def test_run_directory_contents(tiny_run):
    result, run_dir, logged = tiny_run
    assert result.run_dir == run_dir
    assert {"config.json", "metrics.jsonl", CHECKPOINT_NAME} <= {p.name for p in run_dir.iterdir()}
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no debris

    config = json.loads((run_dir / "config.json").read_text())
    assert config["steps"] == 30 and config["batch_size"] == 8 and config["dataset"] == "css-synthetic"
    assert config["loss"] == "soft_triplet"  # resolved from the dataset's default
    assert config["dataset_options"] == TINY_DATASET
    restored = TrainConfig.from_dict(config)
    assert restored.model == tiny_spec() and restored.optimizer == "adamw"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r and "loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    assert steps == logged
    evals = [r["eval"] for r in records if "eval" in r]
    assert len(evals) == 1 and records[-1] == {"eval": evals[0]}
    for key in RECALLS:
        assert evals[0][key] == result.metrics[key]
        assert 0.0 <= result.metrics[key] <= 1.0
    assert result.metrics["protocol"] == "2d" and result.metrics["step"] == 30


def test_checkpoint_holds_recipe_and_metrics(tiny_run):
    result, run_dir, _ = tiny_run
    meta = read_metadata(run_dir / CHECKPOINT_NAME)
    assert meta["recipe"]["dataset"] == "css-synthetic" and meta["recipe"]["steps"] == 30
    assert meta["recipe"]["loss"] == "soft_triplet" and meta["recipe"]["dataset_options"] == TINY_DATASET
    assert meta["preprocessing"]["image_size"] == 32
    assert {k: meta["metrics"][k] for k in RECALLS} == {k: result.metrics[k] for k in RECALLS}
    model, _ = load_checkpoint(run_dir / CHECKPOINT_NAME)
    trained = result.model.state_dict()
    assert all(torch.equal(v, trained[k].cpu()) for k, v in model.state_dict().items())


def test_evaluate_checkpoint_reproduces_metrics(tiny_run):
    result, run_dir, _ = tiny_run
    metrics = evaluate_checkpoint(run_dir, device="cpu")
    assert {k: metrics[k] for k in RECALLS} == {k: result.metrics[k] for k in RECALLS}
    assert metrics["protocol"] == result.metrics["protocol"] and metrics["gallery"] == result.metrics["gallery"]
    # a path to the file works as well as the run directory
    assert evaluate_checkpoint(run_dir / CHECKPOINT_NAME, device="cpu")["recall@1"] == result.metrics["recall@1"]


def test_training_into_a_used_run_dir_refuses(tiny_run):
    _, run_dir, _ = tiny_run
    before = (run_dir / CHECKPOINT_NAME).read_bytes()
    config_before = (run_dir / "config.json").read_text()
    with pytest.raises(ComposeRetrievalError, match="holds a trained model; choose a new --run-dir"):
        train(tiny_config(steps=2, seed=5, run_dir=str(run_dir)), progress=False)
    assert (run_dir / CHECKPOINT_NAME).read_bytes() == before
    assert (run_dir / "config.json").read_text() == config_before


def _losses(seed: int) -> list[float]:
    logged: list[dict] = []
    train(tiny_config(steps=5, log_every=1, seed=seed), progress=False, on_log=logged.append)
    return [r["loss"] for r in logged]


def test_same_seed_same_losses():
    first, second = _losses(0), _losses(0)
    assert len(first) == 5
    assert first == second
    assert _losses(1) != first


def test_bad_config_fails_before_training(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'adamw'"):
        train(tiny_config(optimizer="adam", run_dir=str(tmp_path / "run")), progress=False)
    with pytest.raises(ComposeRetrievalError, match="at least 1"):
        train(tiny_config(steps=0), progress=False)
    assert not (tmp_path / "run").exists()


def test_tirg_learns_beyond_chance():
    logged: list[dict] = []
    config = tiny_config(
        steps=80, log_every=20, seed=0, dataset_options={"train_scenes": 64, "test_scenes": 32, "mods_per_scene": 2, "image_size": 32}
    )
    result = train(config, progress=False, on_log=logged.append)
    gallery = result.metrics["gallery"]
    assert gallery == 96
    chance = 10 / gallery
    assert result.metrics["recall@10"] > 2 * chance, result.metrics
    assert logged[-1]["loss"] < 0.5 * logged[0]["loss"], logged


def test_init_from_starts_from_a_checkpoint(tiny_run, tmp_path):
    """--init-from: the checkpoint's model, weights and vocabulary; with lr 0 nothing moves, so recall is the same."""
    result, run_dir, _ = tiny_run
    # independent pairs: batches of sources shown twice each would pull the BatchNorm statistics further
    config = tiny_config(model=tiny_spec("concat"), init_from=str(run_dir), steps=2, lr=0.0, mods_per_source=1,
                         run_dir=str(tmp_path / "again"))
    again = train(config, progress=False)
    assert again.config.model == result.model.spec  # tirg, not the concat of the config
    assert again.model.text_encoder.vocabulary.words == result.model.text_encoder.vocabulary.words
    before, after = result.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(before[k].cpu(), after[k].cpu()) for k in before if "running" not in k and "num_batches" not in k)
    # the two steps move only the BatchNorm statistics: at most two of the 32 queries change their first answer
    assert again.metrics["recall@1"] == pytest.approx(result.metrics["recall@1"], abs=2 / again.metrics["queries"] + 1e-9)
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["init_from"] == str(run_dir) and saved["model"]["combiner"]["name"] == "tirg"


def test_the_paper_recipe_initialises_resnet_as_torchvision_does():
    """google/tirg's ResNet-18 (torchvision) starts the last BatchNorm of each residual block at 1; timm's at 0."""
    from compose_retrieval.config import make_config

    def encoder(recipe, **choices):
        return make_config(recipe, **choices).model.image_encoder

    def last_bn_weights(spec):
        body = build_model(ModelSpec(combiner=ComponentSpec("tirg"), image_encoder=spec, text_encoder=ComponentSpec("lstm"))).image_encoder.body
        return {float(block.bn2.weight.detach().mean()) for layer in (body.layer1, body.layer4) for block in layer}

    assert last_bn_weights(encoder("paper")) == {1.0}
    assert last_bn_weights(encoder("paper", backbone="resnet18")) == {1.0}  # naming the recipe's model keeps it
    assert last_bn_weights(encoder("cpu")) == {0.0}  # the cpu recipe keeps timm's default
    assert encoder("paper", backbone="resnet50").options == {"model_name": "resnet50"}  # another model: timm's defaults
    assert encoder("cpu", pretrained=True).options == {"model_name": "resnet18", "pretrained": True}  # full width
