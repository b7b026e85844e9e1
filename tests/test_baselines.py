"""Behaviour specific to each baseline combiner, beyond the shared contract tests."""

from __future__ import annotations

import pytest
import torch

import compose_retrieval
from compose_retrieval.features import ImageFeatures, TextFeatures

from conftest import SAMPLE_TEXTS, tiny_model

D = 8


def _features(b: int = 3, c: int = 6, hw: int = 2, t: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = ImageFeatures(torch.randn(b, D, generator=g), torch.randn(b, c, hw, hw, generator=g))
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 2:] = False
    text = TextFeatures(torch.randn(b, D, generator=g), torch.randn(b, t, 5, generator=g), mask)
    return image, text


def test_attribute_operator_starts_near_identity_and_low_rank_works():
    """||T(t) x - x|| starts at about init_scale * ||x||, full rank and low rank alike."""
    d, g = 64, torch.Generator().manual_seed(0)
    x, t = torch.randn(32, d, generator=g), torch.randn(32, d, generator=g)
    image = ImageFeatures(x, torch.zeros(32, 1, 1, 1))
    text = TextFeatures(t, torch.zeros(32, 1, 1), torch.ones(32, 1, dtype=torch.bool))
    for rank in (0, 4):
        for init_scale in (0.1, 0.5):
            torch.manual_seed(rank)
            op = compose_retrieval.create("combiner", "attribute_operator", d, d, d, rank=rank, init_scale=init_scale)
            relative = ((op(image, text) - x).norm(dim=1) / x.norm(dim=1)).mean().item()
            assert init_scale / 2 < relative < init_scale * 2, (rank, init_scale, relative)
    full = compose_retrieval.create("combiner", "attribute_operator", D, D, D)
    assert full.predict.out_features == D * D


def test_param_hashing_weights_follow_the_hash():
    ph = compose_retrieval.create("combiner", "param_hashing", D, D, D, hash_size=11, hash_seed=3).eval()
    image, text = _features()
    with torch.no_grad():
        ph.bias.normal_()
        out = ph(image, text)
        p = ph.candidates(text.sentence)
        for b in range(3):
            w = torch.empty(D, D)
            for m in range(D):
                for n in range(D):
                    w[m, n] = ph.sign_hash[m, n] * p[b, ph.index_hash[m, n]]
            expected = image.pooled[b] + w @ image.pooled[b] + ph.bias
            torch.testing.assert_close(out[b], expected)
    assert int(ph.index_hash.max()) < 11 and set(ph.sign_hash.unique().tolist()) == {-1.0, 1.0}
    same = compose_retrieval.create("combiner", "param_hashing", D, D, D, hash_size=11, hash_seed=3)
    assert torch.equal(same.index_hash, ph.index_hash)


def test_relationship_factorised_first_layer_equals_concatenation():
    rel = compose_retrieval.create("combiner", "relationship", D, D, D, map_channels=6, hidden=7, g_layers=2, f_layers=2).eval()
    image, text = _features()
    out = rel(image, text)
    m = image.feature_map
    b, c, h, w = m.shape
    ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    cells = [torch.cat([m[:, :, y, x], ys[y].expand(b, 1), xs[x].expand(b, 1)], 1) for y in range(h) for x in range(w)]
    weight = torch.cat([rel.first_i.weight, rel.first_j.weight, rel.first_t.weight], 1)
    total = 0
    for oi in cells:
        for oj in cells:
            first = torch.relu(torch.cat([oi, oj, text.sentence], 1) @ weight.T + rel.first_i.bias)
            total = total + rel.g(first)
    torch.testing.assert_close(out, rel.f(total), rtol=1e-4, atol=1e-4)


def test_mrn_block_count_and_residual():
    mrn = compose_retrieval.create("combiner", "mrn", D, D, D, blocks=2)
    assert len(mrn.blocks) == 2
    assert len(compose_retrieval.create("combiner", "mrn", D, D, D).blocks) == 3  # the paper's L = 3
    image, text = _features()
    with torch.no_grad():
        for block in mrn.blocks:
            block.text[0].weight.zero_()
            block.text[0].bias.zero_()
        torch.testing.assert_close(mrn(image, text), mrn.out(text.sentence))  # zero branches: h stays the text


def test_show_and_tell_reads_only_real_tokens():
    st = compose_retrieval.create("combiner", "show_and_tell", D, D, D, token_dim=5).eval()
    image, text = _features()
    out = st(image, text)
    changed = TextFeatures(text.sentence, text.tokens.clone(), text.mask)
    changed.tokens[0, 2:] = 100.0  # padding of the first text
    torch.testing.assert_close(st(image, changed)[0], out[0])
    changed.tokens[1, 0] = 100.0  # a real token of the second
    assert not torch.allclose(st(image, changed)[1], out[1])


@pytest.mark.parametrize("blocks", [[-1], [0, 2]])
def test_film_modulates_the_chosen_blocks_only_for_the_query(blocks):
    model = tiny_model("film", blocks=blocks).eval()
    images = torch.randn(2, 3, 32, 32)
    texts = SAMPLE_TEXTS[:2]
    with torch.no_grad():
        for g in model.combiner.generators:
            g.weight.normal_()
        plain = model.embed_images(images)
        composed = model.compose(images, texts)
        assert not torch.allclose(composed, plain)
        assert torch.equal(model.embed_images(images), plain)  # hooks are removed after the query pass
        for g in model.combiner.generators:
            g.weight.zero_()
            g.bias.zero_()
        torch.testing.assert_close(model.compose(images, texts), plain)  # gamma = beta = 0: the identity
    n = len(model.image_encoder.feature_blocks())
    assert model.combiner.blocks == sorted(b % n for b in blocks)


def test_film_rejects_bad_blocks():
    with pytest.raises(ValueError, match="distinct indices"):
        tiny_model("film", blocks=[7])
