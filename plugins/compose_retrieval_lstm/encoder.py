from __future__ import annotations

from typing import Annotated, Any, Iterable, Literal, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from compose_retrieval.errors import CheckpointError, DatasetError
from compose_retrieval import TextEncoder, TextFeatures
from compose_retrieval.options import Range

from .recurrence import lstm_states
from .vocabulary import TOKENIZERS, Vocabulary


class LSTMTextEncoder(TextEncoder):
    """Word embeddings -> 1-layer LSTM -> last real token -> dropout -> linear (TIRG's text model).

    The vocabulary is fitted on the training texts (``fit``) and saved in the
    checkpoint with its tokenizer; unknown words map to id 0. Options: ``word_dim``,
    ``hidden_dim``, ``dropout``; ``tokenizer``: "unicode" (the default: any script,
    CJK characters and emoji one token each) or "ascii" (google/tirg's rule, which drops
    every non-ASCII character; see vocabulary.py); ``max_tokens``: a text longer than
    that is truncated to its first ``max_tokens`` tokens (the rest is not read);
    ``vocabulary_order``: how ``fit`` numbers the words, "sorted" (the default) or
    "first_seen" (by first appearance in the texts, as google/tirg's SimpleVocab, so that
    the embedding rows of its checkpoints line up).

    A checkpoint whose vocabulary records no tokenizer was written before there were
    two and loads with "ascii", the rule it was trained with; a loaded vocabulary's
    tokenizer is the encoder's, whatever the option said.
    """

    def __init__(self, out_dim: int = 512, word_dim: Annotated[int, Range(1, 16384)] = 512,
        hidden_dim: Annotated[int, Range(1, 16384)] = 512, dropout: Annotated[float, Range(0, 0.99)] = 0.1,
        tokenizer: Literal["unicode", "ascii"] = "unicode", max_tokens: Annotated[int, Range(1, 4096)] = 64,
        vocabulary_order: Literal["sorted", "first_seen"] = "sorted",
    ):
        super().__init__()
        self.out_dim, self.token_dim, self.word_dim = out_dim, hidden_dim, word_dim
        self.max_tokens = max_tokens
        self.vocabulary_order = vocabulary_order
        self.vocabulary = Vocabulary(tokenizer=tokenizer)
        self.embedding = nn.Embedding(len(self.vocabulary), word_dim)
        self.lstm = nn.LSTM(word_dim, hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, out_dim)
        self._cache: dict[str, list[int]] = {}

    @property
    def tokenizer(self) -> str:
        """The name of the rule that splits texts into words: the vocabulary's."""
        return self.vocabulary.tokenizer

    def fit(self, texts: Iterable[str]) -> None:
        """A vocabulary of every word in ``texts``, split by this encoder's tokenizer, in ``vocabulary_order``."""
        texts = list(texts)
        build = Vocabulary.in_order_of if self.vocabulary_order == "first_seen" else Vocabulary.from_texts
        vocabulary = build(texts, self.tokenizer)
        if not vocabulary.words:
            sample = next((t for t in texts if t.strip()), None)
            found = f"{len(texts)} texts, e.g. {sample[:40]!r}" if sample is not None else f"{len(texts)} texts, all empty"
            todo = ("choose --text-encoder-opt tokenizer=unicode, which keeps every script" if self.tokenizer == "ascii"
                    else "check the dataset's texts, which hold only punctuation and white space")
            raise DatasetError(f"the training texts hold no words the {self.tokenizer} tokenizer keeps ({found}); {todo}")
        self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Use ``vocabulary``; the embedding is rebuilt at its size (fresh weights)."""
        self.vocabulary = vocabulary
        self._cache.clear()
        device = self.embedding.weight.device
        self.embedding = nn.Embedding(len(vocabulary), self.word_dim).to(device)

    def extra_state_metadata(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary.words, "tokenizer": self.tokenizer}

    def load_extra_state_metadata(self, state: dict[str, Any]) -> None:
        # no "tokenizer": written before it was recorded, when google/tirg's ascii rule was the only one
        tokenizer = state.get("tokenizer", "ascii")
        if tokenizer not in TOKENIZERS:
            raise CheckpointError(
                f"the checkpoint's LSTM vocabulary uses the tokenizer {tokenizer!r}, which this version does not know "
                f"(it knows {', '.join(TOKENIZERS)}); upgrade compose-retrieval"
            )
        self.set_vocabulary(Vocabulary(state["vocabulary"], tokenizer))

    def token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) padded ids and (B,) lengths, T <= max_tokens; an empty text becomes one unknown token."""
        encoded = []
        for t in texts:
            ids = self._cache.get(t)
            if ids is None:
                ids = self._cache[t] = self.vocabulary.encode(t)[: self.max_tokens] or [Vocabulary.UNKNOWN]
            encoded.append(ids)
        lengths = torch.tensor([len(ids) for ids in encoded])
        # 0 past a text's end: read by neither the last real state nor the mask
        padded = pad_sequence([torch.tensor(ids, dtype=torch.long) for ids in encoded], batch_first=True, padding_value=0)
        return padded, lengths

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        ids, lengths = self.token_ids(texts)
        device = self.embedding.weight.device
        if device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            # nn.LSTM's arithmetic with about half its work (recurrence.py)
            states = lstm_states(self.lstm, self.embedding, ids, lengths)
            mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        else:  # cuDNN's fused LSTM over the padded batch, its states past a text's end set to 0
            ids, lengths = ids.to(device, non_blocking=True), lengths.to(device)
            states, _ = self.lstm(self.embedding(ids))
            mask = torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]
            states = states.masked_fill(~mask[:, :, None], 0.0)
        last = states[torch.arange(len(texts), device=device), lengths - 1]
        return TextFeatures(self.fc(self.dropout(last)), states, mask)
