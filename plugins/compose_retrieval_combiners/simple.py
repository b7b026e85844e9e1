from __future__ import annotations

from torch import Tensor, nn

from compose_retrieval import Combiner, ImageFeatures, TextFeatures


class ImageOnly(Combiner):
    """The query is the reference image's embedding; the text is ignored (a lower bound)."""

    uses_text = False

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int):
        super().__init__()

    def forward(self, image: ImageFeatures, text: None) -> Tensor:
        return image.pooled


class TextOnly(Combiner):
    """The query is the text's embedding; the reference image is ignored (a lower bound)."""

    uses_image = False

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Identity() if text_dim == embed_dim else nn.Linear(text_dim, embed_dim)

    def forward(self, image: None, text: TextFeatures) -> Tensor:
        return self.proj(text.sentence)
