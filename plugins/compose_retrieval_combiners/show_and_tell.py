from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from compose_retrieval import Combiner, ImageFeatures, TextFeatures
from compose_retrieval.options import Range


class ShowAndTell(Combiner):
    """An LSTM reads the image embedding first, then the text's tokens; its last state is the query.

    Vinyals et al., "Show and Tell: A Neural Image Caption Generator", CVPR 2015, used
    as an encoder as in the TIRG paper. Difference: the LSTM reads the text encoder's
    per-token states (for the LSTM text encoder, its hidden states; for a transformer,
    its token embeddings) rather than raw word embeddings, so that any text encoder
    plugs in and the vocabulary stays the text encoder's business. Options:
    ``hidden_dim`` (default: embed_dim).
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int, *, token_dim: int, hidden_dim: Annotated[int, Range(1, 16384)] | None = None
    ):
        super().__init__()
        hidden = hidden_dim or embed_dim
        self.image_in = nn.Linear(image_dim, hidden)
        self.token_in = nn.Linear(token_dim, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, embed_dim)

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        steps = torch.cat([self.image_in(image.pooled)[:, None], self.token_in(text.tokens)], dim=1)
        states, _ = self.lstm(steps)
        last = text.mask.sum(1)  # the image is step 0, so the last real token is at index len(tokens)
        return self.out(states[torch.arange(len(last), device=last.device), last])
