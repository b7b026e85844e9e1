from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from compose_retrieval import Combiner, ImageFeatures, TextFeatures
from compose_retrieval.options import Range


class Concat(Combiner):
    """An MLP on the concatenated image and text vectors (the paper's "concat" baseline).

    BN(2d) -> ReLU -> Linear(2d, 2d) -> BN -> ReLU -> Dropout -> Linear(2d, d), as in
    the paper and google/tirg. Options: ``dropout`` (0.1).
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int, *, dropout: Annotated[float, Range(0, 0.99)] = 0.1
    ):
        super().__init__()
        width = image_dim + text_dim
        self.mlp = nn.Sequential(
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, embed_dim),
        )

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        return self.mlp(torch.cat([image.pooled, text.sentence], dim=1))
