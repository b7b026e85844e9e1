from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from compose_retrieval import Combiner, ImageFeatures, TextFeatures
from compose_retrieval.options import Range


def _mlp(sizes: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Relationship(Combiner):
    """Relation network over the last conv map: sum over cell pairs of g([o_i, o_j, t]), then f.

    Santoro et al., "A simple neural network module for relational reasoning", NIPS
    2017. Each cell o_i of the map carries its (y, x) coordinates in [-1, 1]; g is an
    MLP of ``g_layers`` layers of ``hidden`` units (4 x 256 in the paper), f an MLP of
    ``f_layers`` (3). The first layer of g is applied to o_i, o_j and t separately and
    summed, which equals applying it to their concatenation but costs N instead of N^2
    products.
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int, *, map_channels: int,
        hidden: Annotated[int, Range(1, 16384)] = 256, g_layers: Annotated[int, Range(1, 64)] = 4,
        f_layers: Annotated[int, Range(1, 64)] = 3,
    ):
        super().__init__()
        cell = map_channels + 2
        self.first_i = nn.Linear(cell, hidden)
        self.first_j = nn.Linear(cell, hidden, bias=False)
        self.first_t = nn.Linear(text_dim, hidden, bias=False)
        self.g = _mlp([hidden] * g_layers, last_relu=True)
        self.f = _mlp([hidden] * f_layers + [embed_dim], last_relu=False)

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        m = image.feature_map
        b, c, h, w = m.shape
        ys = torch.linspace(-1, 1, h, device=m.device, dtype=m.dtype)
        xs = torch.linspace(-1, 1, w, device=m.device, dtype=m.dtype)
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).reshape(1, 2, h * w).expand(b, -1, -1)
        cells = torch.cat([m.reshape(b, c, h * w), coords], dim=1).transpose(1, 2)  # (B, N, C + 2)
        pairs = self.first_i(cells)[:, :, None] + self.first_j(cells)[:, None, :] + self.first_t(text.sentence)[:, None, None]
        relations = self.g(torch.relu(pairs))  # (B, N, N, hidden)
        return self.f(relations.sum(dim=(1, 2)))
