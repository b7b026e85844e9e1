"""Checkpoints load offline (the weights come from the file, never from a download) and strictly, saying what differs."""

from __future__ import annotations

import json
import sys

import pytest
import timm
import torch

from compose_retrieval import CheckpointError, build_model, load_checkpoint, save_checkpoint
from compose_retrieval.checkpoint import read_metadata

from conftest import plugin_paths, tiny_model, tiny_spec, write_dist_info


def test_a_pretrained_backbone_is_not_fetched_again_on_load(tmp_path, monkeypatch):
    model = tiny_model("tirg").eval()
    model.spec.image_encoder.options["pretrained"] = True  # as trained with --pretrained
    path = save_checkpoint(model, tmp_path / "model.safetensors")

    created = []
    real_create = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        created.append(pretrained)
        return real_create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    loaded, meta = load_checkpoint(path)
    assert created and not any(created)  # built (on the meta device to check shapes, then for real), never fetched
    assert meta["model"]["image_encoder"]["options"]["pretrained"] is True  # the provenance stays recorded
    assert loaded.spec.image_encoder.options["pretrained"] is True
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert all(state[k].equal(loaded_state[k]) for k in state)


# ------------------------------------------------ loading is strict and says what differs


def _rewrite(path, tmp_path, *, metadata=None, state=None):
    """A copy of checkpoint ``path`` with some metadata fields or tensors replaced."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    meta.update(metadata or {})
    tensors = {**tensors, **(state or {})}
    tensors = {k: v for k, v in tensors.items() if v is not None}
    out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out


def _error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_newer_format_shapes_and_missing_tensors_are_named(tmp_path):
    path = save_checkpoint(tiny_model("tirg"), tmp_path / "model.safetensors")
    message = _error(_rewrite(path, tmp_path, metadata={"format_version": "99"}))
    assert "checkpoint format 99, newer than this library reads (2); upgrade compose-retrieval" in message
    message = _error(_rewrite(path, tmp_path, state={"combiner.weights": torch.zeros(3)}))
    assert "shape mismatch combiner 'tirg' weights (file (3,), model (2,))" in message
    message = _error(_rewrite(path, tmp_path, state={"text_encoder.fc.bias": None}))
    assert "missing text_encoder 'lstm' fc.bias" in message
    message = _error(_rewrite(path, tmp_path, state={"combiner.extra": torch.zeros(1)}))
    assert "unexpected combiner 'tirg' extra" in message


def test_a_combiner_whose_plugin_is_gone_names_the_plugin_and_its_package(tmp_path):
    write_dist_info(tmp_path, "fancy-combiners", "1.2", "[compose_retrieval]\nfancy = fancy_combiners_plugin\n")
    (tmp_path / "fancy_combiners_plugin.py").write_text(
        "from compose_retrieval import hookimpl\n"
        "from compose_retrieval_combiners.concat import Concat\n"
        "class Fancy(Concat):\n    pass\n"
        "@hookimpl\ndef register_combiners(register):\n    register('fancy', Fancy)\n"
    )
    with plugin_paths(tmp_path):
        path = save_checkpoint(build_model(tiny_spec("fancy")), tmp_path / "fancy.safetensors")
        assert read_metadata(path)["plugins"]["combiner"] == {"plugin": "fancy", "package": "fancy-combiners"}
        assert load_checkpoint(path)[0].spec.combiner.name == "fancy"
    sys.modules.pop("fancy_combiners_plugin", None)
    message = _error(path)  # the package is uninstalled now
    assert "needs the combiner 'fancy', which no installed plugin provides" in message
    assert "plugin 'fancy' of the package 'fancy-combiners': pip install fancy-combiners" in message


def test_a_preprocessing_rule_from_a_newer_version_is_one_line(tmp_path):
    path = save_checkpoint(tiny_model("tirg"), tmp_path / "model.safetensors")
    edited = _rewrite(path, tmp_path, metadata={"preprocessing": json.dumps(
        {"image_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "letterbox"})})
    assert "records a preprocessing this version cannot apply (unknown resize rule 'letterbox'" in _error(edited)


def test_evaluation_drops_a_dataset_option_that_no_longer_exists(tmp_path):
    from compose_retrieval.evaluation import evaluate_checkpoint

    from conftest import TINY_DATASET

    recipe = {"dataset": "css-synthetic", "dataset_options": {**TINY_DATASET, "pair_seed": 3}}
    path = save_checkpoint(tiny_model("tirg"), tmp_path / "model.safetensors", recipe=recipe)
    with pytest.warns(UserWarning, match=r"dataset option pair_seed=3, which 'css-synthetic' no longer takes"):
        metrics = evaluate_checkpoint(path, device="cpu")
    assert 0 <= metrics["recall@1"] <= 1

