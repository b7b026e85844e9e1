"""The LSTM encoder's tokenizers: "unicode" keeps every script (CJK per character, emoji kept), "ascii" is
google/tirg's rule unchanged; the choice is saved with the vocabulary, and a checkpoint that does not record
it was trained with ascii. Texts are capped at max_tokens; a vocabulary of no words is refused."""

from __future__ import annotations

import json

import pytest
import torch

import compose_retrieval
from compose_retrieval import load_checkpoint, save_checkpoint
from compose_retrieval.errors import ComposeRetrievalError, OptionError
from compose_retrieval.zoo import zoo_dir
from compose_retrieval_google_tirg import import_tirg
from compose_retrieval_lstm import Vocabulary, ascii_tokenize, unicode_tokenize

from conftest import SAMPLE_TEXTS, tiny_spec
from test_checkpoint import _rewrite
from test_google_tirg_import import ReferenceTIRG, _save_original, css_root  # noqa: F401 (css_root: a fixture)


def _encoder(**options):
    return compose_retrieval.create("text_encoder", "lstm", out_dim=8, word_dim=8, hidden_dim=8, **options)


# ------------------------------------------------ the two rules


def test_unicode_keeps_words_of_any_script_cjk_per_character_and_emoji():
    assert unicode_tokenize("größer") == ["grösser"]  # one word (case-folded: ß -> ss, as "GRÖSSER" is)
    assert unicode_tokenize("Make it GRÖSSER, größer!") == ["make", "it", "grösser", "grösser"]
    assert unicode_tokenize("把红色的圆移到左上角。") == list("把红色的圆移到左上角")
    assert unicode_tokenize("ひらがなとカタカナ") == list("ひらがなとカタカナ")
    assert unicode_tokenize("add ❤️ and 👍🏽 to red🔴circle") == ["add", "❤️", "and", "👍🏽", "to", "red", "🔴", "circle"]
    assert unicode_tokenize("🙂🙂") == ["🙂", "🙂"]
    assert unicode_tokenize("top-left, don't") == ["topleft", "dont"]  # punctuation removed, as google/tirg
    assert unicode_tokenize("cafe\u0301") == unicode_tokenize("café") == ["café"]  # one spelling however it was typed


def test_ascii_is_google_tirgs_rule_unchanged():
    assert ascii_tokenize("größer") == ["grer"]
    assert ascii_tokenize("Add small red circle to top-left!") == ["add", "small", "red", "circle", "to", "topleft"]
    assert ascii_tokenize("把红色的圆 🙂") == []
    assert Vocabulary.in_order_of(["b a", "a c"]).tokenizer == "ascii"  # a vocabulary not told otherwise is ascii
    assert Vocabulary.in_order_of(["b a", "a c"]).words == ["b", "a", "c"]


def test_the_encoder_fits_and_encodes_with_its_tokenizer():
    encoder = _encoder()
    assert encoder.tokenizer == "unicode"
    encoder.fit(["把红色的圆移到左上角", "make it größer 🙂"])
    assert {"把", "角", "größer".casefold(), "🙂"} <= set(encoder.vocabulary.words)
    assert 0 not in encoder.vocabulary.encode("把圆 größer 🙂")
    ascii_encoder = _encoder(tokenizer="ascii")
    ascii_encoder.fit(["make it größer 🙂"])
    assert ascii_encoder.vocabulary.words == ["grer", "it", "make"]


def test_training_texts_without_words_are_refused_in_one_line():
    with pytest.raises(ComposeRetrievalError) as info:
        _encoder(tokenizer="ascii").fit(["把红色的圆移到左上角", "🙂🙂"])
    message = str(info.value)
    assert "hold no words the ascii tokenizer keeps" in message and "tokenizer=unicode" in message
    assert "\n" not in message
    for texts in (["...", "  ", "!?"], []):
        with pytest.raises(ComposeRetrievalError, match="hold no words the unicode tokenizer keeps") as info:
            _encoder().fit(texts)
        assert "\n" not in str(info.value)


def test_long_texts_are_truncated_to_max_tokens():
    encoder = _encoder().eval()
    encoder.fit(SAMPLE_TEXTS)
    long_text = " ".join(["red circle"] * 5000)  # 10,000 words
    ids, lengths = encoder.token_ids([long_text, "remove blue triangle"])
    assert ids.shape == (2, 64) and lengths.tolist() == [64, 3]
    with torch.no_grad():
        features = encoder([long_text])  # 64 LSTM steps, not 10,000
    assert features.sentence.shape == (1, 8) and features.tokens.shape[1] == 64
    short = _encoder(max_tokens=2)
    short.fit(SAMPLE_TEXTS)
    assert short.token_ids(["remove blue triangle"])[0].tolist() == [short.vocabulary.encode("remove blue triangle")[:2]]


def _reference_padding(encoded):
    """The padding token_ids did by hand before pad_sequence: zeros, each row's ids copied in."""
    lengths = torch.tensor([len(ids) for ids in encoded])
    padded = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)
    for i, ids in enumerate(encoded):
        padded[i, : len(ids)] = torch.tensor(ids)
    return padded, lengths


def test_padding_is_what_it_was_by_hand():
    encoder = _encoder(max_tokens=6).eval()
    encoder.fit(SAMPLE_TEXTS)
    texts = ["", "remove blue triangle", "unknownword", "add small red circle to top-left and more words", "!!", "red"]
    ids, lengths = encoder.token_ids(texts)
    encoded = [encoder.vocabulary.encode(t)[:6] or [Vocabulary.UNKNOWN] for t in texts]
    expected_ids, expected_lengths = _reference_padding(encoded)
    assert ids.dtype == torch.long and torch.equal(ids, expected_ids) and torch.equal(lengths, expected_lengths)
    assert ids.shape == (6, 6) and lengths.tolist() == [1, 3, 1, 6, 1, 1]


def test_vocabulary_order_sorted_by_default_or_first_seen():
    texts = ["make the circle red", "add a blue square", "make a red square"]
    default = _encoder()
    default.fit(texts)
    assert default.vocabulary_order == "sorted" and default.vocabulary.words == sorted(Vocabulary.from_texts(texts).words)
    first_seen = _encoder(vocabulary_order="first_seen", tokenizer="ascii")
    first_seen.fit(texts)
    assert first_seen.vocabulary.words == Vocabulary.in_order_of(texts, tokenizer="ascii").words
    assert first_seen.vocabulary.words == ["make", "the", "circle", "red", "add", "a", "blue", "square"]
    assert first_seen.vocabulary.tokenizer == "ascii"


def test_a_first_seen_vocabulary_round_trips_through_a_checkpoint(tmp_path):
    texts = ["turn the circle green", "add a red square"]
    model = _tiny_model(texts, vocabulary_order="first_seen")
    loaded, meta = load_checkpoint(save_checkpoint(model, tmp_path / "model.safetensors"))
    assert meta["model"]["text_encoder"]["options"]["vocabulary_order"] == "first_seen"
    assert loaded.text_encoder.vocabulary.words == model.text_encoder.vocabulary.words == "turn the circle green add a red square".split()


@pytest.mark.parametrize("options, said", [
    ({"tokenizer": "utf8"}, "tokenizer='utf8' is not one of 'unicode', 'ascii'"),
    ({"max_tokens": 0}, "max_tokens=0 must be between 1 and 4096"),
    ({"max_tokens": 5000}, "max_tokens=5000 must be between 1 and 4096"),
    ({"max_tokens": 8.5}, "max_tokens=8.5 is not int"),
    ({"vocabulary_order": "frequency"}, "vocabulary_order='frequency' is not one of 'sorted', 'first_seen'"),
])
def test_bad_options_are_refused(options, said):
    with pytest.raises(OptionError) as info:
        compose_retrieval.create("text_encoder", "lstm", out_dim=8, **options)
    assert said in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------ checkpoints


def _tiny_model(texts, **text_options):
    spec = tiny_spec()
    spec.text_encoder.options.update(text_options)
    model = compose_retrieval.build_model(spec)
    model.text_encoder.fit(texts)
    return model.eval()


def test_a_unicode_vocabulary_round_trips_through_a_checkpoint(tmp_path):
    texts = SAMPLE_TEXTS + ["把红色的圆移到左上角", "make it größer 🙂"]
    model = _tiny_model(texts)  # the default tokenizer, not written in the spec
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    loaded, meta = load_checkpoint(path)
    assert meta["extra_state"]["text_encoder"]["tokenizer"] == "unicode"
    assert loaded.text_encoder.tokenizer == "unicode"
    assert loaded.text_encoder.vocabulary.words == model.text_encoder.vocabulary.words
    queries = ["把圆移到左上角", "make it größer 🙂", "remove blue triangle"]
    with torch.no_grad():
        assert torch.equal(loaded.text_encoder(queries).sentence, model.text_encoder(queries).sentence)


def test_a_checkpoint_that_records_no_tokenizer_loads_with_ascii(tmp_path):
    model = _tiny_model(SAMPLE_TEXTS, tokenizer="ascii")
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    old_extra = {"text_encoder": {"vocabulary": model.text_encoder.vocabulary.words}}  # as written before the choice
    old = _rewrite(path, tmp_path, metadata={"extra_state": json.dumps(old_extra)})
    loaded, _ = load_checkpoint(old)
    assert loaded.text_encoder.tokenizer == "ascii"
    assert loaded.text_encoder.vocabulary.tokenize("Größer circle!") == ["grer", "circle"]
    # a tokenizer this version does not know is named, with what to do
    newer = _rewrite(path, tmp_path, metadata={"extra_state": json.dumps(
        {"text_encoder": {"vocabulary": ["a"], "tokenizer": "sentencepiece"}})})
    with pytest.raises(ComposeRetrievalError, match="tokenizer 'sentencepiece', which this version does not know.*upgrade"):
        load_checkpoint(newer)


def test_the_shipped_checkpoints_tokenise_as_they_were_trained():
    shipped = sorted(zoo_dir().glob("*.safetensors"))
    assert shipped
    for path in shipped:
        model, meta = load_checkpoint(path)
        recorded = meta["extra_state"]["text_encoder"]["tokenizer"]  # every shipped file writes its rule out
        assert recorded in ("ascii", "unicode") and model.text_encoder.tokenizer == recorded


def test_an_imported_google_tirg_model_tokenises_and_saves_as_google_tirg(tmp_path, css_root):
    texts = compose_retrieval.create("dataset", "css", data_root=str(css_root)).train_texts()
    reference = ReferenceTIRG(texts, lastconv=False).eval()
    out = import_tirg(_save_original(reference, tmp_path / "checkpoint_css3d.pth"), "css", css_root, cache_dir=tmp_path)
    model, meta = load_checkpoint(out)
    assert meta["extra_state"]["text_encoder"]["tokenizer"] == "ascii" and model.text_encoder.tokenizer == "ascii"
    for query in ["make the größer circle red!", "add 红 triangle 🙂 to top-left"]:
        assert model.text_encoder.vocabulary.encode(query) == reference.vocab.encode(query)
