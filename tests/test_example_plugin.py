"""The third-party example in examples/plugin-example works through entry points like any user's plugin."""

from __future__ import annotations

import json

import pytest
import torch

import compose_retrieval
from compose_retrieval import registry
from compose_retrieval.checkpoint import load_checkpoint, read_metadata
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
    assert "gated_sum" in compose_retrieval.list_combiners()
    assert set(BUILTIN_COMBINERS) < set(compose_retrieval.list_combiners())
    [(name, description, plugin)] = registry.describe("combiner", "gated_sum")
    assert (name, plugin) == ("gated_sum", "example")
    assert description.startswith("A per-dimension learned gate")


def test_example_combiner_is_gone_without_its_distribution():
    compose_retrieval.reload_plugins()
    assert "gated_sum" not in compose_retrieval.list_combiners()


def test_example_combiner_trains_and_reloads(example_plugin, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(model=tiny_spec("gated_sum", hidden=16), steps=6, log_every=3, run_dir=str(run_dir))
    result = train(config, progress=False)

    assert result.metrics["step"] == 6 and result.metrics["queries"] > 0
    assert type(result.model.combiner).__name__ == "GatedSum"

    path = run_dir / CHECKPOINT_NAME
    assert path.is_file()
    assert read_metadata(path)["model"]["combiner"] == {"name": "gated_sum", "options": {"hidden": 16}}
    saved_config = json.loads((run_dir / "config.json").read_text())
    assert saved_config["model"]["combiner"]["name"] == "gated_sum"

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
