"""Every registered combiner inside the model: compose, train forward and a checkpoint, with the suite's tiny encoders.

The combiner contract itself (shapes, gradients into the declared inputs, batch
independence, padding, no_grad, config round trip) is compose_retrieval.testing's
check_combiner, run over the registry by tests/test_contracts.py; this file checks what
only the assembled model shows: the engine's encoders, the normalisation, a saved file.
"""

from __future__ import annotations

import pytest
import torch

import compose_retrieval
from compose_retrieval import ComponentSpec, ComposeRetrievalError, ModelSpec
from compose_retrieval.checkpoint import load_checkpoint, read_metadata, save_checkpoint

from conftest import EMBED_DIM, SAMPLE_TEXTS, tiny_model

COMBINERS = compose_retrieval.list_combiners()
TEXTS = SAMPLE_TEXTS[:4]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _has_gradient(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum().item() > 0 for p in module.parameters())


@pytest.fixture(params=COMBINERS)
def combiner_name(request):
    return request.param


def test_compose_and_embed_shapes(combiner_name):
    model = tiny_model(combiner_name).eval()
    with torch.no_grad():
        composed = model.compose(_images(4), TEXTS)
        embedded = model.embed_images(_images(4))
    assert composed.shape == (4, EMBED_DIM)
    assert embedded.shape == (4, EMBED_DIM)
    assert torch.isfinite(composed).all() and torch.isfinite(embedded).all()
    # the normalisation layer: every embedding has the learnable scale (4.0) as its length
    torch.testing.assert_close(composed.norm(dim=1), torch.full((4,), 4.0))
    torch.testing.assert_close(embedded.norm(dim=1), torch.full((4,), 4.0))


def test_training_forward_returns_queries_and_targets(combiner_name):
    model = tiny_model(combiner_name).train()
    queries, targets = model(_images(4, 1), TEXTS, _images(4, 2))
    assert queries.shape == targets.shape == (4, EMBED_DIM)
    loss = compose_retrieval.create("loss", "soft_triplet")(queries, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert _has_gradient(model.image_encoder)  # the targets alone give the image encoder a gradient


def test_gradients_follow_declared_inputs_through_the_model(combiner_name):
    """compose() skips an encoder whose output the combiner declares unused: no gradient reaches it."""
    model = tiny_model(combiner_name).train()
    composed = model.compose(_images(4, 3), TEXTS)
    (composed * torch.randn(composed.shape, generator=torch.Generator().manual_seed(7))).sum().backward()
    assert _has_gradient(model.image_encoder) == type(model.combiner).uses_image
    assert _has_gradient(model.text_encoder) == type(model.combiner).uses_text


def test_compose_rejects_mismatched_batch():
    model = tiny_model("tirg").eval()
    with pytest.raises(ComposeRetrievalError, match="3 images but 2 texts"):
        model.compose(_images(3), TEXTS[:2])


def test_checkpoint_round_trip(combiner_name, tmp_path):
    model = tiny_model(combiner_name)
    model.train()
    with torch.no_grad():
        for p in model.parameters():  # weights that differ from a fresh initialisation
            p.add_(0.01 * torch.randn_like(p))
        model.normalization.scale.fill_(3.0)
    model(_images(4, 9), TEXTS, _images(4, 10))  # non-default BatchNorm buffers
    model.eval()

    path = save_checkpoint(model, tmp_path / "model.safetensors", metrics={"recall@1": 0.5}, recipe={"steps": 1})
    loaded, meta = load_checkpoint(path)

    assert not loaded.training
    assert type(loaded.combiner) is type(model.combiner)
    assert loaded.spec == model.spec
    assert meta["metrics"] == {"recall@1": 0.5} and meta["recipe"] == {"steps": 1}
    assert read_metadata(path)["model"]["combiner"]["name"] == combiner_name
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)

    # the vocabulary travels with the checkpoint; unknown words map to id 0
    vocabulary, loaded_vocabulary = model.text_encoder.vocabulary, loaded.text_encoder.vocabulary
    assert loaded_vocabulary.words == vocabulary.words
    ids = loaded_vocabulary.encode("add zebra")
    assert ids == vocabulary.encode("add zebra") and ids[0] != 0 and ids[1] == 0

    images = _images(3, 11)
    texts = ["add small red circle to top-left", "remove zebra", "make yellow triangle cyan"]
    with torch.no_grad():
        assert torch.equal(loaded.compose(images, texts), model.compose(images, texts))
        assert torch.equal(loaded.embed_images(images), model.embed_images(images))


def test_film_refuses_a_token_backbone_up_front():
    """A ViT's blocks output tokens, not maps: the timm encoder exposes none, and film says so instead of crashing."""
    from compose_retrieval import OptionError

    spec = ModelSpec(ComponentSpec("film"), ComponentSpec("timm", {"model_name": "test_vit"}), ComponentSpec("lstm"), 64)
    with pytest.raises(OptionError, match="exposes none .* choose a CNN backbone"):
        compose_retrieval.build_model(spec)
