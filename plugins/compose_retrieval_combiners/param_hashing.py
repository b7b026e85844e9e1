from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from compose_retrieval.errors import OptionError
from compose_retrieval import Combiner, ImageFeatures, TextFeatures
from compose_retrieval.options import Range


class ParamHashing(Combiner):
    """A text-conditioned fc layer on the image vector, its weights hashed from a candidate vector.

    Noh et al., "Image Question Answering using Convolutional Neural Network with
    Dynamic Parameter Prediction" (DPPnet), CVPR 2016: the text predicts a candidate
    weight vector p of size K (``hash_size``); weight w_mn = xi(m, n) * p[psi(m, n)]
    with psi an index hash into [0, K) and xi a +-1 sign hash. The hashes are fixed
    random tables drawn from ``hash_seed`` and stored with the model (buffers), so a
    checkpoint keeps its hashing. Difference: DPPnet hashes a layer of its own VQA
    network; here the dynamic layer maps the image embedding to the query, followed by
    a learned bias, and its output is added to the image vector (a residual, so training
    starts from image retrieval). Options: ``hash_size`` (default 40000), ``hash_seed``.
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int, *,
        hash_size: Annotated[int, Range(1, 10_000_000)] = 40000, hash_seed: int = 0,
    ):
        super().__init__()
        if image_dim != embed_dim:
            raise OptionError(f"param_hashing adds its output to the image vector, so image_dim ({image_dim}) must equal embed_dim ({embed_dim})")
        g = torch.Generator().manual_seed(hash_seed)
        self.register_buffer("index_hash", torch.randint(hash_size, (embed_dim, image_dim), generator=g))
        self.register_buffer("sign_hash", torch.randint(2, (embed_dim, image_dim), generator=g).float() * 2 - 1)
        self.candidates = nn.Linear(text_dim, hash_size)
        nn.init.normal_(self.candidates.weight, std=1.0 / (image_dim * text_dim) ** 0.5)
        nn.init.zeros_(self.candidates.bias)
        self.bias = nn.Parameter(torch.zeros(embed_dim))

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        p = self.candidates(text.sentence)  # (B, K)
        weights = p[:, self.index_hash] * self.sign_hash  # (B, d, d)
        return image.pooled + torch.bmm(weights, image.pooled[:, :, None]).squeeze(2) + self.bias
