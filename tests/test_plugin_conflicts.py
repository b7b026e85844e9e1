"""One bad plugin never disables the tool: name conflicts are contained, import failures name their package."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import compose_retrieval
from compose_retrieval import DuplicateNameError, registry
from compose_retrieval.checkpoint import load_checkpoint
from compose_retrieval.rundir import CHECKPOINT_NAME

from conftest import TINY_CLI_MODEL, assert_one_line_error, invoke, plugin_paths, write_dist_info

# A package that registers a combiner under a taken name ("tirg") and one under a name another package also takes.
PLUGIN_A = '''
import torch
from compose_retrieval import Combiner, hookimpl


class Sum(Combiner):
    """image + text, projected (package A)."""

    def __init__(self, image_dim, text_dim, embed_dim):
        super().__init__()
        self.fc = torch.nn.Linear(image_dim, embed_dim)

    def forward(self, image, text):
        return self.fc(image.pooled + text.sentence)


class Product(Sum):
    """image * text, projected (package A)."""

    def forward(self, image, text):
        return self.fc(image.pooled * text.sentence)


@hookimpl
def register_combiners(register):
    register("tirg", Sum)
    register("shared_name", Product)
'''

PLUGIN_B = '''
from compose_retrieval import hookimpl
from compose_retrieval_example_conflict_a import Sum


class Other(Sum):
    """the same idea (package B)."""


@hookimpl
def register_combiners(register):
    register("shared_name", Other)
'''


@pytest.fixture
def two_conflicting_packages(tmp_path):
    write_dist_info(tmp_path, "conflict-a", "1.0", "[compose_retrieval]\nexample_a = compose_retrieval_example_conflict_a\n")
    write_dist_info(tmp_path, "conflict-b", "1.0", "[compose_retrieval]\nexample_b = compose_retrieval_example_conflict_b\n")
    (tmp_path / "compose_retrieval_example_conflict_a.py").write_text(PLUGIN_A)
    (tmp_path / "compose_retrieval_example_conflict_b.py").write_text(PLUGIN_B)
    with plugin_paths(tmp_path), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def test_a_conflict_is_a_warning_naming_both_packages(tmp_path):
    write_dist_info(tmp_path, "conflict-a", "1.0", "[compose_retrieval]\nexample_a = compose_retrieval_example_conflict_a\n")
    (tmp_path / "compose_retrieval_example_conflict_a.py").write_text(PLUGIN_A)
    with plugin_paths(tmp_path):
        with pytest.warns(RuntimeWarning) as record:
            names = compose_retrieval.list_combiners()
        [message] = [str(w.message) for w in record if "'tirg'" in str(w.message)]
        assert "'combiners' (package 'compose-retrieval')" in message and "'example_a' (package 'conflict-a')" in message
        assert "combiners:tirg or example_a:tirg" in message
        # the warning points at the plugin's line that registers the name, not at the engine
        [at] = [w for w in record if "'tirg'" in str(w.message)]
        assert at.filename.endswith("compose_retrieval_example_conflict_a.py")
        assert {"combiners:tirg", "example_a:tirg", "concat", "shared_name"} <= set(names) and "tirg" not in names


def test_the_bare_name_is_ambiguous_and_the_qualified_name_picks_each(two_conflicting_packages):
    with pytest.raises(DuplicateNameError, match="choose one: combiners:tirg or example_a:tirg"):
        registry.get_entry("combiner", "tirg")
    assert type(compose_retrieval.create("combiner", "combiners:tirg", 8, 8, 8)).__name__ == "TIRG"
    assert type(compose_retrieval.create("combiner", "example_a:tirg", 8, 8, 8)).__name__ == "Sum"
    assert type(compose_retrieval.create("combiner", "example_a:shared_name", 8, 8, 8)).__name__ == "Product"
    assert type(compose_retrieval.create("combiner", "example_b:shared_name", 8, 8, 8)).__name__ == "Other"
    # wildcards match the bare name of an ambiguous one too, and a misspelling still finds it
    assert compose_retrieval.list_combiners("tirg*") == ["combiners:tirg", "example_a:tirg", "tirg_lastconv"]
    with pytest.raises(compose_retrieval.UnknownNameError, match="Did you mean 'tirg'"):
        registry.get_entry("combiner", "tirgg")
    # a qualified name always works, conflict or not
    assert type(compose_retrieval.create("combiner", "combiners:concat", 8, 8, 8)).__name__ == "Concat"


def test_every_other_command_keeps_working(two_conflicting_packages, tmp_path):
    listing = invoke("list", "combiners")
    assert listing.exit_code == 0 and "example_a:tirg" in listing.stdout and "concat" in listing.stdout
    assert invoke("info", "combiner", "example_b:shared_name").exit_code == 0
    trained = invoke("train", *TINY_CLI_MODEL, "--combiner", "concat", "--dataset-opt", "image_size=32",
                     "--dataset-opt", "train_scenes=16", "--dataset-opt", "test_scenes=8", "--run-dir", tmp_path / "concat")
    assert trained.exit_code == 0, trained.output
    assert invoke("evaluate", tmp_path / "concat", "--device", "cpu").exit_code == 0
    # the shipped checkpoint names "tirg": it recorded which plugin made it, so it loads as that plugin's
    model, _ = compose_retrieval.load_pretrained("tirg-css-synthetic")
    assert type(model.combiner).__name__ == "TIRG" and model.spec.combiner.name == "combiners:tirg"
    assert_one_line_error(invoke("train", *TINY_CLI_MODEL, "--combiner", "tirg", "--run-dir", tmp_path / "x"),
                          "combiner 'tirg' is registered by", "choose one: combiners:tirg or example_a:tirg")


def test_a_run_with_a_qualified_name_trains_and_loads(two_conflicting_packages, tmp_path):
    result = invoke("train", *TINY_CLI_MODEL, "--combiner", "example_a:tirg", "--dataset-opt", "image_size=32",
                    "--dataset-opt", "train_scenes=16", "--dataset-opt", "test_scenes=8", "--run-dir", tmp_path / "a")
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)
    assert type(model.combiner).__name__ == "Sum" and meta["plugins"]["combiner"] == {"plugin": "example_a", "package": "conflict-a"}
    assert meta["plugins"]["dataset"]["plugin"] == "css_synthetic" and meta["plugins"]["loss"]["plugin"] == "losses"


def test_a_plugin_that_fails_to_import_names_its_package_and_points_at_its_line(tmp_path):
    write_dist_info(tmp_path, "broken-thing", "2.0", "[compose_retrieval]\nbroken = broken_plugin_thing\n")
    (tmp_path / "broken_plugin_thing.py").write_text("import os\n\nimport a_library_that_is_not_installed\n")
    with plugin_paths(tmp_path):
        with pytest.warns(RuntimeWarning) as record:
            assert "tirg" in compose_retrieval.list_combiners()
        [warning] = [w for w in record if "'broken'" in str(w.message)]
        message = str(warning.message)
        assert "package 'broken-thing'" in message and "pip uninstall broken-thing" in message
        assert "No module named 'a_library_that_is_not_installed'" in message
        assert warning.filename.endswith("broken_plugin_thing.py") and warning.lineno == 3


def test_two_packages_declaring_one_plugin_name_keep_the_first_and_say_so(tmp_path):
    write_dist_info(tmp_path, "first-pkg", "1.0", "[compose_retrieval]\nsame = compose_retrieval_example_first\n")
    write_dist_info(tmp_path, "second-pkg", "1.0", "[compose_retrieval]\nsame = compose_retrieval_example_second\n")
    (tmp_path / "compose_retrieval_example_first.py").write_text("")
    (tmp_path / "compose_retrieval_example_second.py").write_text("")
    with plugin_paths(tmp_path):
        with pytest.warns(RuntimeWarning, match="'same' is declared by the packages 'first-pkg' and 'second-pkg'"):
            registry.get_plugin_manager()
        assert registry.plugin_package("same") == "first-pkg"


def test_a_checkpoint_of_a_missing_dataset_plugin_says_what_to_install(tmp_path):
    """The checkpoint records which package provided its dataset: evaluating it without that package says so."""
    plugin = '''
from compose_retrieval import hookimpl
from compose_retrieval_css_synthetic import CSSSynthetic


@hookimpl
def register_datasets(register):
    register("shapes-of-mine", CSSSynthetic)
'''
    write_dist_info(tmp_path / "pkgs", "shapes-pkg", "3.0", "[compose_retrieval]\nshapes = compose_retrieval_example_shapes\n")
    (tmp_path / "pkgs" / "compose_retrieval_example_shapes.py").write_text(plugin)
    with plugin_paths(tmp_path / "pkgs"):
        result = invoke("train", *TINY_CLI_MODEL, "--dataset", "shapes-of-mine", "--dataset-opt", "image_size=32",
                        "--dataset-opt", "train_scenes=16", "--dataset-opt", "test_scenes=8", "--run-dir", tmp_path / "run")
        assert result.exit_code == 0, result.output
    meta = compose_retrieval.checkpoint.read_metadata(tmp_path / "run" / CHECKPOINT_NAME)
    assert meta["plugins"]["dataset"] == {"plugin": "shapes", "package": "shapes-pkg"}
    assert_one_line_error(invoke("evaluate", tmp_path / "run", "--device", "cpu"),
                          "dataset 'shapes-of-mine', which no installed plugin provides", "pip install shapes-pkg")


def test_a_plugin_under_development_joins_every_process_through_the_environment(tmp_path, monkeypatch):
    """$COMPOSE_RETRIEVAL_PLUGINS loads importable modules as plugins, the CLI's process included, without installing."""
    (tmp_path / "compose_retrieval_example_dev.py").write_text(PLUGIN_A.replace('register("tirg", Sum)\n', ""))
    monkeypatch.setenv("COMPOSE_RETRIEVAL_PLUGINS", "compose_retrieval_example_dev, a_module_that_is_not_there")
    with plugin_paths(tmp_path):
        with pytest.warns(RuntimeWarning, match="'a_module_that_is_not_there' .from .COMPOSE_RETRIEVAL_PLUGINS. failed to import"):
            assert "shared_name" in compose_retrieval.list_combiners()
        assert registry.get_entry("combiner", "shared_name").plugin == "compose_retrieval_example_dev"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COMPOSE_RETRIEVAL_PLUGINS": "compose_retrieval_example_dev"}
    script = Path(sys.executable).parent / "compose-retrieval"  # the console script of this environment
    listed = subprocess.run([str(script), "list", "combiners", "shared*"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert listed.returncode == 0 and "shared_name" in listed.stdout, listed.stderr
