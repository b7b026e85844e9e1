from __future__ import annotations

import torch
from torch import Tensor, nn

from compose_retrieval.errors import OptionError
from compose_retrieval import Combiner, ImageFeatures, TextFeatures


class TIRG(Combiner):
    """Text Image Residual Gating on the image vector (Vo et al., CVPR 2019).

    out = w_g * sigmoid(gate([x, t])) * x + w_r * res([x, t]), with
    gate = BN -> ReLU -> Linear(., d) and res = BN -> ReLU -> Linear -> ReLU -> Linear(., d);
    (w_g, w_r) learnable, initialised (1.0, 10.0) as in google/tirg. Options:
    ``gate_weight``, ``residual_weight`` (the initial values).
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        embed_dim: int,
        *,
        gate_weight: float = 1.0,
        residual_weight: float = 10.0,
    ):
        super().__init__()
        if image_dim != embed_dim:
            raise OptionError(f"tirg gates the image vector, so image_dim ({image_dim}) must equal embed_dim ({embed_dim})")
        width = image_dim + text_dim
        self.gate = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, image_dim))
        self.residual = nn.Sequential(
            nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, image_dim)
        )
        self.weights = nn.Parameter(torch.tensor([gate_weight, residual_weight]))

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        x = image.pooled
        joint = torch.cat([x, text.sentence], dim=1)
        return self.weights[0] * torch.sigmoid(self.gate(joint)) * x + self.weights[1] * self.residual(joint)


class TIRGLastConv(Combiner):
    """TIRG applied to the last convolutional map (the paper's choice for CSS).

    The text vector is tiled over H x W and concatenated to the map's channels; each
    branch is BN2d -> Conv3x3 -> ReLU -> Conv3x3 back to the map's channels. The
    modified map goes through the image encoder's own pool and projection, so queries
    land in the gallery's space. Options: ``gate_weight``, ``residual_weight``.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        embed_dim: int,
        *,
        map_channels: int,
        gate_weight: float = 1.0,
        residual_weight: float = 10.0,
    ):
        super().__init__()
        width = map_channels + text_dim

        def branch() -> nn.Sequential:
            return nn.Sequential(
                nn.BatchNorm2d(width),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, map_channels, 3, padding=1),
            )

        self.gate, self.residual = branch(), branch()
        self.weights = nn.Parameter(torch.tensor([gate_weight, residual_weight]))

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        x = image.feature_map
        tiled = text.sentence[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        joint = torch.cat([x, tiled], dim=1)
        return self.weights[0] * torch.sigmoid(self.gate(joint)) * x + self.weights[1] * self.residual(joint)
