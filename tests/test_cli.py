"""The CLI through typer's CliRunner: list, train, evaluate, and errors as one line without a traceback."""

from __future__ import annotations

import json

import pytest

from compose_retrieval.checkpoint import read_metadata
from compose_retrieval.rundir import CHECKPOINT_NAME

from conftest import BUILTIN_COMBINERS, TINY_CLI_MODEL, assert_one_line_error, invoke

TINY_TRAIN = [
    *TINY_CLI_MODEL,
    "--dataset-opt", "train_scenes=48", "--dataset-opt", "test_scenes=16", "--dataset-opt", "mods_per_scene=2", "--dataset-opt", "image_size=32",
]




def test_list_combiners():
    result = invoke("list", "combiners")
    assert result.exit_code == 0, result.output
    for name in BUILTIN_COMBINERS:
        assert name in result.stdout
    assert "combiners" in result.stdout  # the plugin column
    assert "soft_triplet" not in result.stdout  # only the kind asked for


def test_list_everything_and_wildcards():
    result = invoke("list")
    assert result.exit_code == 0
    assert all(name in result.stdout for name in ["tirg", "soft_triplet", "css-synthetic", "timm", "lstm"])
    result = invoke("list", "combiners", "--pattern", "*_only")
    assert result.exit_code == 0
    assert "image_only" in result.stdout and "text_only" in result.stdout and "tirg" not in result.stdout


def test_list_unknown_kind():
    assert_one_line_error(invoke("list", "combinerss"), "did you mean 'combiners'")


def test_train_misspelt_combiner(tmp_path):
    result = invoke("train", "--combiner", "tirgg", *TINY_TRAIN, "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "did you mean", "'tirg'")
    assert not (tmp_path / "run").exists()


def test_train_unknown_option(tmp_path):
    result = invoke("train", *TINY_TRAIN, "--loss-opt", "simlarity=dot", "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "'simlarity'", "did you mean 'similarity'")


def test_train_bad_option_value_is_one_line(tmp_path):
    """A value the loss rejects (similarity=cosine) is a user error too, not a traceback."""
    result = invoke("train", *TINY_TRAIN, "--loss-opt", "similarity=cosine", "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "cosine")


def test_train_unknown_backbone_is_one_line(tmp_path):
    result = invoke("train", *TINY_TRAIN, "--backbone", "resnet_that_does_not_exist", "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "resnet_that_does_not_exist")


def test_train_engine_set_size_and_bad_option_values_are_one_line(tmp_path):
    """Options the engine sets itself, and values a combiner rejects, are user errors, not tracebacks."""
    result = invoke("train", *TINY_TRAIN, "--text-encoder-opt", "out_dim=8", "--run-dir", tmp_path / "a")
    assert_one_line_error(result, "'out_dim' is set by the engine")
    result = invoke("train", *TINY_TRAIN, "--combiner", "film", "--combiner-opt", "blocks=[7]", "--run-dir", tmp_path / "b")
    assert_one_line_error(result, "film blocks [7] must be distinct indices")


def test_train_batch_of_one_is_one_line(tmp_path):
    """A batch of one has no negatives (and BatchNorm cannot train on it): refuse it up front."""
    args = list(TINY_TRAIN)
    args[args.index("--batch-size") + 1] = "1"
    assert_one_line_error(invoke("train", *args, "--run-dir", tmp_path / "run"), "batch")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", *TINY_TRAIN, "--run-dir", run_dir)
    return result, run_dir


def test_train_tiny(cli_run):
    result, run_dir = cli_run
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert "recall@1" in result.stdout and "recall@10" in result.stdout
    assert "protocol: 2d" in result.stdout
    assert (run_dir / CHECKPOINT_NAME).is_file() and (run_dir / "config.json").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["steps"] == 3 and config["model"]["embed_dim"] == 32
    assert config["model"]["image_encoder"]["options"]["model_name"] == "test_resnet"
    assert config["model"]["text_encoder"]["options"] == {"word_dim": 16, "hidden_dim": 16}
    assert config["dataset_options"] == {"train_scenes": 48, "test_scenes": 16, "mods_per_scene": 2, "image_size": 32}
    # the printed recall@1 is the one saved with the model
    saved = read_metadata(run_dir / CHECKPOINT_NAME)["metrics"]
    assert f"{saved['recall@1']:.4f}" in result.stdout


def test_train_refuses_a_used_run_dir(cli_run):
    _, run_dir = cli_run
    result = invoke("train", *TINY_TRAIN, "--run-dir", run_dir)
    assert_one_line_error(result, "holds a trained model", "choose a new --run-dir")


def test_evaluate_json_matches_checkpoint_metadata(cli_run):
    _, run_dir = cli_run
    result = invoke("evaluate", run_dir, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    saved = read_metadata(run_dir / CHECKPOINT_NAME)["metrics"]
    recall_keys = [k for k in saved if k.startswith("recall@")]
    assert recall_keys == [f"recall@{k}" for k in (1, 5, 10, 50, 100)]
    assert {k: metrics[k] for k in recall_keys} == {k: saved[k] for k in recall_keys}
    assert metrics["protocol"] == saved["protocol"] == "2d"
    assert metrics["gallery"] == saved["gallery"] and metrics["queries"] == saved["queries"]


def test_evaluate_table(cli_run):
    _, run_dir = cli_run
    result = invoke("evaluate", run_dir / CHECKPOINT_NAME, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "recall@1" in result.stdout and "protocol: 2d" in result.stdout


def test_evaluate_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    line = assert_one_line_error(invoke("evaluate", missing), "not found")
    assert str(missing) in line


def test_error_messages_are_printed_verbatim(tmp_path):
    """Square brackets in a path are text, not rich markup: the error shows the path as given."""
    missing = tmp_path / "[bold]run" / "model.safetensors"
    line = assert_one_line_error(invoke("evaluate", missing), "not found")
    assert str(missing) in line


def test_init_from_refuses_model_options(tmp_path):
    result = invoke("train", *TINY_TRAIN, "--init-from", "tirg-css-synthetic", "--combiner", "concat", "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "--init-from takes the model from the checkpoint; drop --combiner, --backbone")


def test_info_shows_options_types_defaults_and_where_a_component_comes_from():
    result = invoke("info", "combiner", "mrn", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["plugin"] == "combiners" and found["package"] == "compose-retrieval"
    assert found["options"] == [{"name": "blocks", "type": "int, between 1 and 64", "default": "3"}]
    assert "Kim et al." in found["documentation"]
    table = invoke("info", "datasets", "css-synthetic")  # the plural works as in `list`
    assert table.exit_code == 0 and "train_scenes" in table.stdout and "one of '2d', '3d'" in table.stdout
    timm = json.loads(invoke("info", "image-encoder", "timm", "--json").stdout)
    assert timm["main_option"] == "model_name"
    recipe = json.loads(invoke("info", "recipe", "cpu", "--json").stdout)
    assert recipe["recipe"]["default"] is True and recipe["recipe"]["training"]["steps"] == 1200
    assert_one_line_error(invoke("info", "combiner", "mrm"), "did you mean 'mrn'")
    assert_one_line_error(invoke("info", "combinerz", "mrn"), "unknown kind")


def test_list_takes_a_wildcard_after_the_kind():
    result = invoke("list", "combiners", "tirg*")
    assert result.exit_code == 0 and "tirg_lastconv" in result.stdout and "concat" not in result.stdout
    everything = invoke("list", "--pattern", "*triplet*")  # across kinds: only the kinds with a match are shown
    assert "soft_triplet" in everything.stdout and "combiners" not in everything.stdout
