"""Recipes are plugins; make_config is the one assembly of a run that the CLI also uses."""

from __future__ import annotations

import json

import pytest

import compose_retrieval
from compose_retrieval import ComponentSpec, ComposeRetrievalError, ImageEncoder, ImageFeatures, ModelSpec, OptionError, hookimpl
from compose_retrieval.config import make_config
from compose_retrieval.recipes import Recipe, default_recipe_name, get_recipe

from conftest import TINY_CLI_MODEL, assert_one_line_error, invoke


class ArchEncoder(ImageEncoder):
    """An encoder whose architecture option is called ``arch``."""

    main_option = "arch"

    def __init__(self, out_dim: int = 8, arch: str = "small", pretrained: bool = False):
        super().__init__()
        self.out_dim, self.map_channels = out_dim, 4


class PlainEncoder(ArchEncoder):
    """An encoder that declares no main option."""

    main_option = None

    def __init__(self, out_dim: int = 8):
        super().__init__(out_dim)


class Plugin:
    @hookimpl
    def register_image_encoders(self, register):
        register("arch_encoder", ArchEncoder)
        register("plain_encoder", PlainEncoder)

    @hookimpl
    def register_recipes(self, register):
        register("tiny", Recipe(
            description="a recipe of a test", dataset="css-synthetic",
            model=ModelSpec(ComponentSpec("concat"), ComponentSpec("arch_encoder", {"arch": "wide"}), ComponentSpec("lstm"), 16),
            training={"steps": 7, "lr": 0.5}, fallback_loss="soft_triplet", backbone_init={"pretrained": False},
        ))


@pytest.fixture
def plugin(clean_registry):
    compose_retrieval.register_plugin(Plugin(), name="recipe-test")
    yield


def test_the_builtin_recipes_are_plugins_and_cpu_is_the_default():
    assert {"cpu", "paper"} <= set(compose_retrieval.registry.list_components("recipe"))
    assert default_recipe_name() == "cpu"
    name, recipe = get_recipe()
    assert name == "cpu" and recipe.training["steps"] == 1200


def test_make_config_takes_what_is_left_out_from_the_recipe(plugin):
    config = make_config("tiny")
    assert config.recipe == "tiny" and config.steps == 7 and config.lr == 0.5
    assert config.model.combiner.name == "concat" and config.model.embed_dim == 16
    assert config.model.image_encoder == ComponentSpec("arch_encoder", {"arch": "wide"})
    assert config.loss == "soft_triplet"  # neither the recipe nor the dataset forces one: css-synthetic's default
    overridden = make_config("tiny", steps=3, combiner="tirg", combiner_options={"gate_weight": 2.0}, loss="batch_softmax")
    assert overridden.steps == 3 and overridden.model.combiner == ComponentSpec("tirg", {"gate_weight": 2.0})
    assert overridden.loss == "batch_softmax"


def test_backbone_sets_the_main_option_of_any_encoder(plugin):
    spec = make_config("tiny", backbone="huge").model.image_encoder
    assert spec == ComponentSpec("arch_encoder", {"arch": "huge"})  # the recipe's width is for its own backbone only
    assert make_config("tiny", backbone="wide").model.image_encoder.options == {"arch": "wide", "pretrained": False}
    assert make_config("tiny", pretrained=True).model.image_encoder.options == {"arch": "wide", "pretrained": True}
    with pytest.raises(OptionError, match="declares no main option"):
        make_config("tiny", image_encoder="plain_encoder", backbone="x")
    with pytest.raises(OptionError, match="has no pretrained option"):
        make_config("tiny", image_encoder="plain_encoder", pretrained=True)


def test_backbone_of_an_encoder_without_a_main_option_is_one_line(plugin, tmp_path):
    result = invoke("train", *TINY_CLI_MODEL, "--image-encoder", "plain_encoder", "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "declares no main option", "--image-encoder-opt")


def test_init_from_refuses_a_model_choice_in_the_api_as_on_the_command_line(tmp_path):
    with pytest.raises(OptionError, match="drop --combiner"):
        make_config(init_from="some-run", combiner="concat")
    result = invoke("train", "--init-from", "some-run", "--combiner", "concat", "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "--init-from takes the model from the checkpoint", "--combiner")


def test_the_cli_and_make_config_write_the_same_config(tmp_path, monkeypatch):
    """What `train` runs is exactly make_config of its arguments."""
    import compose_retrieval.training

    seen = {}

    def record(config, **kwargs):
        seen["config"] = config
        raise ComposeRetrievalError("stop here")

    monkeypatch.setattr(compose_retrieval.training, "train", record)
    invoke("train", *TINY_CLI_MODEL, "--combiner", "concat", "--dataset-opt", "image_size=32", "--run-dir", tmp_path / "r")
    expected = make_config(
        combiner="concat", backbone="test_resnet", embed_dim=32, text_encoder_options={"word_dim": 16, "hidden_dim": 16},
        dataset_options={"image_size": 32}, steps=3, batch_size=8, device="cpu", seed=0,
        run_dir=str(tmp_path / "r"),
    )
    assert json.dumps(seen["config"].to_dict(), sort_keys=True) == json.dumps(expected.to_dict(), sort_keys=True)


def test_no_default_recipe_or_two_is_one_line(clean_registry):
    class Second:
        @hookimpl
        def register_recipes(self, register):
            from compose_retrieval_recipes import CPU

            register("also-default", CPU)

    compose_retrieval.register_plugin(Second(), name="second-default")
    with pytest.raises(ComposeRetrievalError, match="exactly one installed recipe should be the default, found 2"):
        make_config()
    assert make_config("paper").recipe == "paper"  # naming one still works
