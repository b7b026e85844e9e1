"""An example compose-retrieval plugin: one small combiner, registered through a hook."""

import torch
from torch import nn

from compose_retrieval import Combiner, hookimpl


class GatedSum(Combiner):
    """A per-dimension learned gate mixes the image vector with the projected text vector."""

    def __init__(self, image_dim, text_dim, embed_dim, *, hidden: int = 256):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.gate = nn.Sequential(nn.Linear(image_dim + text_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, image, text):
        g = torch.sigmoid(self.gate(torch.cat([image.pooled, text.sentence], dim=1)))
        return g * image.pooled + (1 - g) * self.text_proj(text.sentence)


@hookimpl
def register_combiners(register):
    register("gated_sum", GatedSum)
