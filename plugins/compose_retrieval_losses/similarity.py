from __future__ import annotations

from torch import Tensor

from compose_retrieval.errors import OptionError

SIMILARITIES = ("dot", "l2")


def check_similarity(similarity: str) -> str:
    if similarity not in SIMILARITIES:
        raise OptionError(f"unknown similarity {similarity!r}; use one of {', '.join(SIMILARITIES)}")
    return similarity


def similarity_matrix(queries: Tensor, targets: Tensor, similarity: str) -> Tensor:
    """kappa(q_i, t_j) for every pair: the dot product, or the negative squared L2 distance."""
    if similarity == "dot":
        return queries @ targets.T
    if similarity == "l2":
        sq = (queries * queries).sum(1, keepdim=True) + (targets * targets).sum(1)[None, :] - 2 * queries @ targets.T
        return -sq
    raise OptionError(f"unknown similarity {similarity!r}; use one of {', '.join(SIMILARITIES)}")
