"""The LSTM text encoder's CPU path (recurrence.py: the input's gates once per distinct word, rows read
longest first and stopped at their last token, the backward written out) computes what nn.LSTM over the
padded batch computed before it: the same sentence vectors, token states and gradients to float tolerance,
the same loss curve in training, and the same parameters under the same state_dict keys."""

from __future__ import annotations

import pytest
import torch

import compose_retrieval
from compose_retrieval_lstm import LSTMTextEncoder
from compose_retrieval_lstm.recurrence import _Recurrence

from conftest import SAMPLE_TEXTS, tiny_model

TEXTS = [
    "add small red circle to top-left", "", "remove blue triangle", "unknownword", "red",
    "make gray rectangle at middle-center large and then some more words", "!!", "make yellow triangle cyan",
]


def _reference_forward(encoder: LSTMTextEncoder, texts):
    """The encoder's forward before recurrence.py: nn.LSTM (oneDNN on a CPU) over the padded batch."""
    ids, lengths = encoder.token_ids(texts)
    states, _ = encoder.lstm(encoder.embedding(ids))
    last = states[torch.arange(len(texts)), lengths - 1]
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    return encoder.fc(encoder.dropout(last)), states, mask


def _encoder(**options) -> LSTMTextEncoder:
    torch.manual_seed(0)
    # word_dim != hidden_dim != out_dim, so that a transposed weight cannot pass
    encoder = compose_retrieval.create("text_encoder", "lstm", out_dim=12, word_dim=24, hidden_dim=20, **options)
    encoder.fit(SAMPLE_TEXTS)
    return encoder


def _grads(encoder, outputs):
    sentence, tokens, mask = outputs
    # weigh every output differently, so that a row or a step mixed up cannot pass
    weights = torch.linspace(0.5, 1.5, sentence.numel()).reshape(sentence.shape)
    token_weights = torch.linspace(-1, 1, tokens.numel()).reshape(tokens.shape) * mask[:, :, None]
    encoder.zero_grad(set_to_none=True)
    ((sentence * weights).sum() + (tokens * token_weights).sum()).backward()
    return {name: p.grad.clone() for name, p in encoder.named_parameters()}


@pytest.mark.parametrize("texts", [
    TEXTS,
    TEXTS[:1],  # one text
    ["red", "blue", "", "triangle"],  # every text one token long: no recurrence at all
    ["remove blue triangle"] * 3,  # all the same length
    list(reversed(TEXTS)),
], ids=["mixed", "one", "one-token", "same-length", "reversed"])
def test_the_cpu_path_equals_nn_lstm_forward_and_backward(texts):
    encoder = _encoder(max_tokens=7).eval()
    features = encoder(texts)
    reference = _reference_forward(encoder, texts)
    mask = reference[2]
    assert torch.equal(features.mask, mask)
    torch.testing.assert_close(features.sentence, reference[0], rtol=1e-5, atol=1e-6)
    real = mask[:, :, None]
    torch.testing.assert_close(features.tokens * real, reference[1] * real, rtol=1e-5, atol=1e-6)
    assert not features.tokens[~mask].any()  # 0 past a text's end
    grads, reference_grads = _grads(encoder, features), _grads(encoder, reference)
    assert grads.keys() == reference_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_no_grad_and_train_mode_give_the_same_as_before():
    encoder = _encoder()
    with torch.no_grad():
        expected = _reference_forward(encoder.eval(), TEXTS)[0]
        torch.testing.assert_close(encoder(TEXTS).sentence, expected, rtol=1e-5, atol=1e-6)
    encoder.train()
    torch.manual_seed(1)
    trained = encoder(TEXTS).sentence
    torch.manual_seed(1)  # the same dropout mask: one dropout call on the same shape
    torch.testing.assert_close(trained, _reference_forward(encoder, TEXTS)[0], rtol=1e-5, atol=1e-6)


def test_the_recurrences_backward_is_the_derivative_of_its_forward():
    torch.manual_seed(0)
    steps, batch, hidden = 4, 5, 3
    active = [5, 4, 2, 1]
    gx = torch.randn(steps, batch, 4 * hidden, dtype=torch.double, requires_grad=True)
    w_hh = torch.randn(4 * hidden, hidden, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, w: _Recurrence.apply(g, w, active), (gx, w_hh))


def test_the_state_dict_keys_and_shapes_are_unchanged():
    encoder = _encoder()
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items()} == {
        "embedding.weight": (len(encoder.vocabulary), 24),
        "lstm.weight_ih_l0": (80, 24), "lstm.weight_hh_l0": (80, 20), "lstm.bias_ih_l0": (80,), "lstm.bias_hh_l0": (80,),
        "fc.weight": (12, 20), "fc.bias": (12,),
    }


@pytest.mark.parametrize("combiner", ["tirg", "show_and_tell"])
def test_training_gives_the_loss_curve_of_nn_lstm(monkeypatch, combiner):
    """A few SGD steps of a tiny model: the same losses and weights as with the encoder's old forward.

    SGD, not AdamW: under tirg the text encoder's output bias has a gradient of float noise alone (the
    combiner's BatchNorm removes a constant shift), and AdamW's first steps turn any noise into steps of
    the full learning rate, so its bias differs by 2 x lr between two thread counts of the old forward."""

    def run():
        torch.manual_seed(0)
        model = tiny_model(combiner).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = compose_retrieval.create("loss", "batch_softmax")
        texts = [TEXTS[i % len(TEXTS)] for i in range(8)]
        images = torch.randn(16, 3, 32, 32)
        losses = []
        for _ in range(4):
            queries, targets = model(images[:8], texts, images[8:])
            loss = loss_fn(queries, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, model.text_encoder.state_dict()

    losses, weights = run()
    def reference(self, texts):
        return compose_retrieval.TextFeatures(*_reference_forward(self, texts))

    monkeypatch.setattr(LSTMTextEncoder, "forward", reference)
    reference_losses, reference_weights = run()
    assert losses == pytest.approx(reference_losses, rel=1e-4, abs=1e-5)
    for name in weights:
        torch.testing.assert_close(weights[name], reference_weights[name], rtol=1e-3, atol=1e-5, msg=name)


_GRADIENTS_IN_A_FRESH_PROCESS = """
import hashlib, torch
from compose_retrieval_lstm import LSTMTextEncoder
torch.set_num_threads(2)
torch.manual_seed(0)
encoder = LSTMTextEncoder(out_dim=512)  # the paper's sizes: 512-d words and state
texts = [("make red circle at top-left blue", "add large gray triangle to bottom-right", "remove cyan rectangle")[i % 3]
         + " x" * (i % 5) for i in range(32)]
encoder.fit(texts)
encoder(texts).sentence.square().sum().backward()
print(hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in encoder.parameters() if p.grad is not None)).hexdigest())
"""


def test_two_processes_compute_the_same_gradients_to_the_bit():
    """On several threads the gradient of a word shared by many tokens is summed in one order in every process (the
    gather was advanced indexing, whose backward summed in an order that changed between processes: two runs of one
    seed drifted apart in rounding, and a run resumed in a new process was no longer the uninterrupted one)."""
    import subprocess
    import sys

    digests = {subprocess.run([sys.executable, "-c", _GRADIENTS_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(4)}
    assert len(digests) == 1, digests
