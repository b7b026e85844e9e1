from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from compose_retrieval.errors import OptionError
from compose_retrieval import Combiner, ImageEncoder, ImageFeatures, TextFeatures


class FiLM(Combiner):
    """Text-predicted per-channel scale and shift of the image CNN's feature maps, inside the CNN.

    Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI
    2018; in the TIRG paper's comparison it is applied inside the image CNN. For each
    chosen block k, a linear map of the text predicts gamma_k and beta_k, and the
    block's output F becomes (1 + gamma_k) * F + beta_k (gamma is predicted around 1,
    as the FiLM paper recommends). The query is the encoder's embedding of the
    modulated image. Option ``blocks``: indices into the image encoder's
    ``feature_blocks()`` (for a ResNet: stem, layer1 .. layer4), default ``[-1]``, the
    last block.
    """

    conditions_image_encoder = True

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int, *, block_channels: Sequence[int], blocks: Sequence[int] = (-1,),
    ):
        super().__init__()
        if image_dim != embed_dim:
            raise OptionError(f"film returns the image embedding, so image_dim ({image_dim}) must equal embed_dim ({embed_dim})")
        if not block_channels:
            raise OptionError("film conditions the image encoder's feature maps, and this encoder exposes none "
                              "(a token model such as a ViT, or an encoder without feature_blocks()); choose a CNN backbone")
        n = len(block_channels)
        self.blocks = sorted({b % n for b in blocks if -n <= b < n})
        if len(self.blocks) != len(blocks):
            raise OptionError(f"film blocks {list(blocks)} must be distinct indices of the encoder's {n} feature blocks")
        self.generators = nn.ModuleList(nn.Linear(text_dim, 2 * block_channels[b]) for b in self.blocks)
        for g in self.generators:
            nn.init.normal_(g.weight, std=1e-3)
            nn.init.zeros_(g.bias)

    def image_features(self, encoder: ImageEncoder, images: Tensor, text: TextFeatures) -> ImageFeatures:
        modules = encoder.feature_blocks()
        handles = []
        for block, generator in zip(self.blocks, self.generators):
            gamma, beta = generator(text.sentence)[:, :, None, None].chunk(2, dim=1)

            def modulate(module, inputs, output, gamma=gamma, beta=beta):
                return (1 + gamma) * output + beta

            handles.append(modules[block][0].register_forward_hook(modulate))
        try:
            return encoder(images)
        finally:
            for h in handles:
                h.remove()

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        return image.pooled
