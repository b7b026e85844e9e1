"""The third-party example in examples/plugin-example works through entry points like any user's plugin."""

from __future__ import annotations

import json

import pytest
import torch

import compose_retrieval
from compose_retrieval import registry
from compose_retrieval.checkpoint import load_checkpoint, read_metadata
from compose_retrieval.testing import check_combiner, check_loss
from compose_retrieval.rundir import CHECKPOINT_NAME
from compose_retrieval.training import train

from conftest import BUILTIN_COMBINERS, EMBED_DIM, EXAMPLE_PLUGIN_DIR, plugin_paths, tiny_config, tiny_spec, write_dist_info


@pytest.fixture
def example_plugin(tmp_path):
    """The example distribution 'installed' through a dist-info in tmp_path (no pip, no network)."""
    site = tmp_path / "site"
    write_dist_info(
        site, "compose-retrieval-example", "0.1.0", "[compose_retrieval]\nexample = compose_retrieval_example\n"
    )
    with plugin_paths(site, EXAMPLE_PLUGIN_DIR):
        yield


def test_example_combiner_is_found_through_its_entry_point(example_plugin):
    assert "example_gated_sum" in compose_retrieval.list_combiners()
    assert set(BUILTIN_COMBINERS) < set(compose_retrieval.list_combiners())
    [(name, description, plugin)] = registry.describe("combiner", "example_gated_sum")
    assert (name, plugin) == ("example_gated_sum", "example")
    assert description.startswith("A per-dimension learned gate")


def test_example_loss_is_found_through_its_entry_point(example_plugin):
    [(name, description, plugin)] = registry.describe("loss", "example_hinge")
    assert (name, plugin) == ("example_hinge", "example")
    assert description.startswith("Every other target of the batch is a negative")


def test_example_components_are_gone_without_their_distribution():
    compose_retrieval.reload_plugins()
    assert "example_gated_sum" not in compose_retrieval.list_combiners()
    assert "example_hinge" not in compose_retrieval.list_losses()


def test_example_components_keep_the_contract(example_plugin):
    """The classes the installed entry point registers pass the checks a third-party author runs."""
    check_combiner(registry.get_entry("combiner", "example_gated_sum").factory, hidden=16)
    check_loss(registry.get_entry("loss", "example_hinge").factory, margin=0.5)


def test_example_names_are_taken_by_no_other_plugin(example_plugin):
    """A name two plugins register is ambiguous; the example's own must stay unique among everything installed."""
    for kind, name in (("combiner", "example_gated_sum"), ("loss", "example_hinge")):
        assert compose_retrieval.list_components(kind, name) == [name]


def test_example_combiner_trains_and_reloads(example_plugin, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(model=tiny_spec("example_gated_sum", hidden=16), steps=6, log_every=3, run_dir=str(run_dir))
    result = train(config, progress=False)

    assert result.metrics["step"] == 6 and result.metrics["queries"] > 0
    assert type(result.model.combiner).__name__ == "GatedSum"

    path = run_dir / CHECKPOINT_NAME
    assert path.is_file()
    assert read_metadata(path)["model"]["combiner"] == {"name": "example_gated_sum", "options": {"hidden": 16}}
    saved_config = json.loads((run_dir / "config.json").read_text())
    assert saved_config["model"]["combiner"]["name"] == "example_gated_sum"

    loaded, meta = load_checkpoint(path)
    assert type(loaded.combiner).__name__ == "GatedSum"
    assert loaded.combiner.gate[0].out_features == 16
    assert meta["metrics"]["recall@1"] == result.metrics["recall@1"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["remove red circle", "add small blue triangle to top-left"]
    with torch.no_grad():
        out = loaded.compose(images, texts)
        torch.testing.assert_close(out, result.model.cpu().eval().compose(images, texts), rtol=1e-4, atol=1e-5)
    assert out.shape == (2, EMBED_DIM)
