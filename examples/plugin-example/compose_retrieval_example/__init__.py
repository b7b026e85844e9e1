"""An example compose-retrieval plugin: a small combiner and a small loss, each registered through a hook."""

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from compose_retrieval import Combiner, Loss, Range, hookimpl


class GatedSum(Combiner):
    """A per-dimension learned gate mixes the image vector with the projected text vector."""

    def __init__(self, image_dim, text_dim, embed_dim, *, hidden: Annotated[int, Range(1, 16384)] = 256):
        super().__init__()
        self.image_proj = nn.Identity() if image_dim == embed_dim else nn.Linear(image_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.gate = nn.Sequential(nn.Linear(image_dim + text_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, image, text):
        g = torch.sigmoid(self.gate(torch.cat([image.pooled, text.sentence], dim=1)))
        return g * self.image_proj(image.pooled) + (1 - g) * self.text_proj(text.sentence)


class Hinge(Loss):
    """Every other target of the batch is a negative: mean of relu(margin + s(q, t-) - s(q, t+)), s the dot product."""

    def __init__(self, margin: Annotated[float, Range(0, 100)] = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, queries, targets):
        scores = queries @ targets.T  # (B, B); row i's positive is column i
        violations = F.relu(self.margin + scores - scores.diagonal()[:, None])
        off_diagonal = ~torch.eye(len(scores), dtype=torch.bool, device=scores.device)
        return violations[off_diagonal].mean()


# Names are global across every installed plugin: prefix yours with your package's name.
@hookimpl
def register_combiners(register):
    register("example_gated_sum", GatedSum)


@hookimpl
def register_losses(register):
    register("example_hinge", Hinge)
