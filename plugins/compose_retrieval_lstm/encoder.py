from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from compose_retrieval.interfaces import TextEncoder, TextFeatures

from .vocabulary import Vocabulary


class LSTMTextEncoder(TextEncoder):
    """Word embeddings -> 1-layer LSTM -> last real token -> dropout -> linear (TIRG's text model).

    The vocabulary is fitted on the training texts (``fit``) and saved in the
    checkpoint; unknown words map to id 0. Options: ``word_dim``, ``hidden_dim``, ``dropout``.
    """

    def __init__(self, out_dim: int = 512, word_dim: int = 512, hidden_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.out_dim, self.token_dim, self.word_dim = out_dim, hidden_dim, word_dim
        self.vocabulary = Vocabulary()
        self.embedding = nn.Embedding(len(self.vocabulary), word_dim)
        self.lstm = nn.LSTM(word_dim, hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, out_dim)
        self._cache: dict[str, list[int]] = {}

    def fit(self, texts: Iterable[str]) -> None:
        self.set_vocabulary(Vocabulary.from_texts(texts))

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Use ``vocabulary``; the embedding is rebuilt at its size (fresh weights)."""
        self.vocabulary = vocabulary
        self._cache.clear()
        device = self.embedding.weight.device
        self.embedding = nn.Embedding(len(vocabulary), self.word_dim).to(device)

    def extra_state_metadata(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary.words}

    def load_extra_state_metadata(self, state: dict[str, Any]) -> None:
        self.set_vocabulary(Vocabulary(state["vocabulary"]))

    def token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) padded ids and (B,) lengths; an empty text becomes one unknown token."""
        encoded = []
        for t in texts:
            ids = self._cache.get(t)
            if ids is None:
                ids = self._cache[t] = self.vocabulary.encode(t) or [Vocabulary.UNKNOWN]
            encoded.append(ids)
        lengths = torch.tensor([len(ids) for ids in encoded])
        padded = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)
        for i, ids in enumerate(encoded):
            padded[i, : len(ids)] = torch.tensor(ids)
        return padded, lengths

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        ids, lengths = self.token_ids(texts)
        device = self.embedding.weight.device
        ids = ids.to(device, non_blocking=True)
        states, _ = self.lstm(self.embedding(ids))
        last = states[torch.arange(len(texts), device=device), (lengths - 1).to(device)]
        mask = torch.arange(ids.shape[1], device=device)[None, :] < lengths.to(device)[:, None]
        return TextFeatures(self.fc(self.dropout(last)), states, mask)
