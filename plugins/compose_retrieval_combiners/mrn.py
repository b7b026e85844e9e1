from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn

from compose_retrieval import Combiner, ImageFeatures, TextFeatures
from compose_retrieval.options import Range


class MRNBlock(nn.Module):
    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.text = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.image = nn.Sequential(nn.Linear(image_dim, dim), nn.Tanh(), nn.Linear(dim, dim), nn.Tanh())

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return h + self.text(h) * self.image(x)


class MRN(Combiner):
    """Multimodal residual learning: h_l = h_(l-1) + tanh(W h_(l-1)) * tanh(W' tanh(W'' x)), h_0 = text.

    Kim et al., "Multimodal Residual Learning for Visual QA", NIPS 2016: ``blocks``
    residual blocks (3, as in the paper), each multiplying a text branch with a
    two-layer image branch; a final linear map gives the query. The shortcut is the
    identity (the paper projects it when sizes differ; here h keeps the text's size).
    The nonlinearities follow Kim et al., a tanh after each linear map; summaries of
    TIRG's comparison that write fc(tanh(h)) * fc(tanh(fc(tanh(x)))), a tanh before
    each map, differ only in where the chain of maps and tanh starts and ends.
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int, *, blocks: Annotated[int, Range(1, 64)] = 3
    ):
        super().__init__()
        self.blocks = nn.ModuleList(MRNBlock(image_dim, text_dim) for _ in range(blocks))
        self.out = nn.Linear(text_dim, embed_dim)

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        h = text.sentence
        for block in self.blocks:
            h = block(h, image.pooled)
        return self.out(h)
