"""The registry: lookups, errors that help, in-process plugins and broken plugins.

Every assertion about what is registered holds with any third-party plugin installed
beside the built-ins: the built-in names are a subset of the listing, and a test that
changes the registry compares with the listing it found. Name conflicts between plugins
are tests/test_plugin_conflicts.py's.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import warnings

import pytest

import compose_retrieval
from compose_retrieval import ComposeRetrievalError, UnknownNameError, hookimpl, registry
from compose_retrieval.components import Combiner

from conftest import BUILTIN_COMBINERS, plugin_paths, tiny_spec, write_dist_info


class _Extra(Combiner):
    """An in-process test combiner."""

    def __init__(self, image_dim, text_dim, embed_dim, *, map_channels=0, token_dim=0):
        super().__init__()

    def forward(self, image, text):
        return image.pooled


class ExtraPlugin:
    @hookimpl
    def register_combiners(self, register):
        register("extra_for_test", _Extra)


class FailingHookPlugin:
    @hookimpl
    def register_combiners(self, register):
        raise RuntimeError("boom in the hook")


BUILTINS = {
    "combiner": set(BUILTIN_COMBINERS),
    "loss": {"batch_softmax", "soft_triplet"},
    "dataset": {"css", "css-synthetic", "fashion200k", "mitstates", "triplets"},
    "image_encoder": {"timm"},
    "text_encoder": {"lstm", "transformers"},
    "recipe": {"cpu", "paper"},
}


BUILTIN_PLUGINS = {
    ep.name for ep in importlib.metadata.distribution("compose-retrieval").entry_points
    if ep.group == registry.ENTRY_POINT_GROUP
}


@pytest.fixture
def builtins_only():
    """The registry with this distribution's plugins alone: for tests of lookups, not of what else is installed
    (a third-party plugin that registers 'tirg' too makes the bare name ambiguous, listed as PLUGIN:NAME)."""
    compose_retrieval.reload_plugins()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whatever the other installed plugins warn about
        names = [name for name, _ in registry.get_plugin_manager().list_name_plugin()]
    for name in names:
        if name not in BUILTIN_PLUGINS:
            compose_retrieval.unregister_plugin(name)
    yield
    compose_retrieval.reload_plugins()


def _bare(name: str) -> str:
    return name.rpartition(":")[2]  # a name another plugin registers too is listed as PLUGIN:NAME


@pytest.mark.parametrize("kind", sorted(BUILTINS))
def test_every_builtin_is_listed_sorted(kind):
    names = compose_retrieval.list_components(kind)
    missing = BUILTINS[kind] - {_bare(n) for n in names}
    assert not missing, f"built-in {kind}s {sorted(missing)} are not listed (listed: {names})"
    assert names == sorted(names)


def test_the_list_functions_list_their_kind():
    assert compose_retrieval.list_combiners() == compose_retrieval.list_components("combiner")
    assert compose_retrieval.list_losses() == compose_retrieval.list_components("loss")
    assert compose_retrieval.list_datasets() == compose_retrieval.list_components("dataset")
    assert compose_retrieval.list_image_encoders() == compose_retrieval.list_components("image_encoder")
    assert compose_retrieval.list_text_encoders() == compose_retrieval.list_components("text_encoder")


@pytest.mark.parametrize("kind,pattern,present,absent", [
    ("combiner", "tirg*", {"tirg", "tirg_lastconv"}, {"concat", "film"}),
    ("combiner", "*_only", {"image_only", "text_only"}, {"tirg", "concat"}),
    ("loss", "soft_*", {"soft_triplet"}, {"batch_softmax"}),
    ("dataset", "css*", {"css", "css-synthetic"}, {"triplets"}),
])
def test_list_functions_accept_wildcards(kind, pattern, present, absent, builtins_only):
    names = compose_retrieval.list_components(kind, pattern)
    assert present <= set(names) and not absent & set(names)
    assert all(fnmatch.fnmatchcase(n, pattern) for n in names) and names == sorted(names)


def test_a_pattern_that_matches_nothing_lists_nothing():
    assert compose_retrieval.list_combiners("zz-no-such-component-*") == []


def test_unknown_name_suggests_and_lists(builtins_only):
    with pytest.raises(UnknownNameError) as info:
        compose_retrieval.create("combiner", "tirgg")
    message = str(info.value)
    assert "Did you mean 'tirg'" in message
    assert "combiner" in message and "'tirgg'" in message
    for name in BUILTIN_COMBINERS:
        assert name in message
    assert set(BUILTIN_COMBINERS) <= set(info.value.available)
    assert info.value.available == compose_retrieval.list_combiners()
    assert isinstance(info.value, ComposeRetrievalError) and isinstance(info.value, KeyError)


def test_unknown_name_without_close_match_still_lists():
    with pytest.raises(UnknownNameError) as info:
        compose_retrieval.create("loss", "zzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "batch_softmax" in str(info.value) and "soft_triplet" in str(info.value)


def test_unknown_kind():
    with pytest.raises(UnknownNameError, match="Did you mean 'combiner'"):
        compose_retrieval.list_components("combiners")


def test_unknown_option_names_the_option():
    with pytest.raises(ComposeRetrievalError) as info:
        registry.create("loss", "soft_triplet", simlarity="dot")
    message = str(info.value)
    assert "'simlarity'" in message and "soft_triplet" in message
    assert "Did you mean 'similarity'" in message
    with pytest.raises(ComposeRetrievalError, match="'colour'"):
        registry.create("dataset", "css-synthetic", colour=3)


def test_engine_supplied_arguments_are_not_options():
    with pytest.raises(compose_retrieval.OptionError, match="'out_dim' is set by the engine"):
        registry.check_options("text_encoder", "lstm", {"out_dim": 8})
    with pytest.raises(compose_retrieval.OptionError, match="'map_channels' is set by the engine"):
        compose_retrieval.build_model(tiny_spec("tirg_lastconv", map_channels=3))


def test_an_option_value_the_component_rejects_is_an_option_error():
    """A factory's own TypeError / ValueError about an option becomes one OptionError naming the component."""
    with pytest.raises(compose_retrieval.OptionError, match=r"film blocks \[7\] must be distinct indices"):
        compose_retrieval.build_model(tiny_spec("film", blocks=[7]))
    with pytest.raises(compose_retrieval.OptionError, match=r"text encoder 'lstm': option hidden_dim='big' is not int"):
        registry.create("text_encoder", "lstm", hidden_dim="big")  # checked from its annotation, before the factory runs


def test_create_remembers_options():
    loss = registry.create("loss", "batch_softmax", similarity="l2")
    assert loss.config() == {"similarity": "l2"}
    assert loss._registry_name == "batch_softmax"


def test_in_process_register_and_unregister(clean_registry):
    plugin = ExtraPlugin()
    assert "extra_for_test" not in compose_retrieval.list_combiners()
    name = compose_retrieval.register_plugin(plugin, name="extra")
    assert name == "extra"
    assert "extra_for_test" in compose_retrieval.list_combiners()
    assert registry.describe("combiner", "extra_for_test") == [("extra_for_test", "An in-process test combiner.", "extra")]
    assert isinstance(compose_retrieval.create("combiner", "extra_for_test", 32, 32, 32), _Extra)
    compose_retrieval.unregister_plugin(plugin)
    assert "extra_for_test" not in compose_retrieval.list_combiners()

    compose_retrieval.register_plugin(plugin, name="extra")
    assert "extra_for_test" in compose_retrieval.list_combiners()
    compose_retrieval.unregister_plugin("extra")  # by name
    assert "extra_for_test" not in compose_retrieval.list_combiners()


def test_registering_a_taken_plugin_name_is_a_library_error(clean_registry):
    """register_plugin documents ComposeRetrievalError for a name already registered."""
    before = compose_retrieval.list_combiners()
    with pytest.raises(ComposeRetrievalError, match="combiners"):
        compose_retrieval.register_plugin(ExtraPlugin(), name="combiners")
    assert compose_retrieval.list_combiners() == before


def test_failing_hook_warns_and_is_skipped(clean_registry):
    before = compose_retrieval.list_combiners()
    compose_retrieval.register_plugin(FailingHookPlugin(), name="failing")
    with pytest.warns(RuntimeWarning, match="'failing'.*boom in the hook"):
        names = compose_retrieval.list_combiners()
    assert names == before


def test_broken_plugin_warns_and_the_rest_loads(tmp_path):
    combiners_before, losses_before = compose_retrieval.list_combiners(), compose_retrieval.list_losses()
    write_dist_info(tmp_path, "broken-plugin", "0.1", "[compose_retrieval]\nbroken = broken_plugin_mod\n")
    (tmp_path / "broken_plugin_mod.py").write_text('raise ImportError("this plugin needs a missing library")\n')
    with plugin_paths(tmp_path):
        with pytest.warns(RuntimeWarning) as record:
            combiners = compose_retrieval.list_combiners()
        messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
        assert any("'broken'" in m and "ImportError" in m and "missing library" in m for m in messages), messages
        assert combiners == combiners_before
        assert compose_retrieval.list_losses() == losses_before
        assert "broken" not in dict(registry.get_plugin_manager().list_name_plugin())
        assert "combiners" in dict(registry.get_plugin_manager().list_name_plugin())
    # after teardown the broken distribution is gone: no warning about it any more
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert compose_retrieval.list_combiners() == combiners_before
    assert not [w for w in record if "broken" in str(w.message)]
