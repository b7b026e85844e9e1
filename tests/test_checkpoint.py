"""Checkpoints load offline: the weights come from the file, never from a download."""

from __future__ import annotations

import timm

from compose_retrieval import load_checkpoint, save_checkpoint

from conftest import tiny_model


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
    assert created == [False]
    assert meta["model"]["image_encoder"]["options"]["pretrained"] is True  # the provenance stays recorded
    assert loaded.spec.image_encoder.options["pretrained"] is True
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert all(state[k].equal(loaded_state[k]) for k in state)
