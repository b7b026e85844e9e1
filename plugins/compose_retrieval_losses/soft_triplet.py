from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from compose_retrieval.errors import OptionError
from compose_retrieval import Loss

from .similarity import check_similarity, similarity_matrix


class SoftTripletLoss(Loss):
    """Soft triplet loss, K = 2, M = B - 1: mean of log(1 + exp(kappa(q, t-) - kappa(q, t+))).

    Every other target of the batch is a negative of each query (paper section 3.3),
    computed as one B x B matrix: no loop over triplets. Options: ``similarity``: "l2"
    (negative squared distance, google/tirg's choice) or "dot"; ``anchors``: "queries"
    (the paper's form above) or "both", google/tirg's form: the 2B features [queries;
    targets] are all anchors, each one's positive is the other member of its pair and its
    negatives are every feature of another pair, queries included, so with batches of
    same-source pairs (``--mods-per-source 2``) the loss also pushes two edits of one
    image apart. google/tirg samples 3 triplets per anchor and its hand-written backward
    returns half the true gradient; "both" averages over every negative and returns the
    true gradient (halve --lr to match its step).
    """

    def __init__(self, similarity: Literal["dot", "l2"] = "l2", anchors: Literal["queries", "both"] = "queries"):
        super().__init__()
        self.similarity = check_similarity(similarity)
        self.anchors = anchors

    def forward(self, queries: Tensor, targets: Tensor) -> Tensor:
        n = queries.shape[0]
        if n < 2:
            raise OptionError("soft_triplet needs a batch of at least 2 (the other targets are the negatives): raise --batch-size")
        if self.anchors == "both":
            features = torch.cat([queries, targets])
            sim = similarity_matrix(features, features, self.similarity)
            pair = torch.arange(2 * n, device=sim.device) % n
            positive = sim.gather(1, ((torch.arange(2 * n, device=sim.device) + n) % (2 * n))[:, None])
            negative = pair[:, None] != pair[None, :]
            return F.softplus((sim - positive)[negative]).mean()
        sim = similarity_matrix(queries, targets, self.similarity)
        diff = sim - sim.diagonal()[:, None]
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=sim.device)
        return F.softplus(diff[off_diagonal]).mean()
