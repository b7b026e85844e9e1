from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from compose_retrieval import Loss

from .similarity import check_similarity, similarity_matrix


class BatchSoftmaxLoss(Loss):
    """Batch-based classification, K = B, M = 1: cross-entropy of the B x B similarities against the diagonal.

    Option ``similarity``: "dot" (google/tirg's choice) or "l2".
    """

    def __init__(self, similarity: Literal["dot", "l2"] = "dot"):
        super().__init__()
        self.similarity = check_similarity(similarity)

    def forward(self, queries: Tensor, targets: Tensor) -> Tensor:
        sim = similarity_matrix(queries, targets, self.similarity)
        return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))
