from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from compose_retrieval.errors import OptionError
from compose_retrieval.interfaces import Loss

from .similarity import check_similarity, similarity_matrix


class SoftTripletLoss(Loss):
    """Soft triplet loss, K = 2, M = B - 1: mean of log(1 + exp(kappa(q, t-) - kappa(q, t+))).

    Every other target of the batch is a negative of each query (paper section 3.3),
    computed as one B x B matrix: no loop over triplets. Option ``similarity``: "l2"
    (negative squared distance, google/tirg's choice) or "dot".
    """

    def __init__(self, similarity: Literal["dot", "l2"] = "l2"):
        super().__init__()
        self.similarity = check_similarity(similarity)

    def forward(self, queries: Tensor, targets: Tensor) -> Tensor:
        n = queries.shape[0]
        if n < 2:
            raise OptionError("soft_triplet needs a batch of at least 2 (the other targets are the negatives): raise --batch-size")
        sim = similarity_matrix(queries, targets, self.similarity)
        diff = sim - sim.diagonal()[:, None]
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=sim.device)
        return F.softplus(diff[off_diagonal]).mean()
