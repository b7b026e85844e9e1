"""The losses against naive double loops written from the TIRG paper's section 3.3.

The loss contract (a finite scalar, gradients into both sides, matches below
mismatches, B = 2, config round trip) is compose_retrieval.testing's check_loss, run
over the registry by tests/test_contracts.py.
"""

from __future__ import annotations

import pytest
import torch

import compose_retrieval
from compose_retrieval import ComposeRetrievalError


def kappa(q: torch.Tensor, t: torch.Tensor, similarity: str) -> torch.Tensor:
    """kappa(q, t) for two vectors, one coordinate at a time."""
    if similarity == "dot":
        total = q.new_zeros(())
        for d in range(q.shape[0]):
            total = total + q[d] * t[d]
        return total
    if similarity == "l2":
        total = q.new_zeros(())
        for d in range(q.shape[0]):
            total = total + (q[d] - t[d]) ** 2
        return -total
    raise AssertionError(similarity)


def naive_soft_triplet(queries, targets, similarity):
    """K = 2, M = B - 1: 1/(MB) sum_i sum_{j != i} log(1 + exp(kappa(q_i, t_j) - kappa(q_i, t_i)))."""
    b = queries.shape[0]
    m = b - 1
    total = queries.new_zeros(())
    for i in range(b):
        positive = kappa(queries[i], targets[i], similarity)
        for j in range(b):
            if j != i:
                total = total + torch.log(1 + torch.exp(kappa(queries[i], targets[j], similarity) - positive))
    return total / (m * b)


def naive_batch_softmax(queries, targets, similarity):
    """K = B, M = 1: -1/B sum_i log softmax_j kappa(q_i, t_j) at j = i."""
    b = queries.shape[0]
    total = queries.new_zeros(())
    for i in range(b):
        scores = [kappa(queries[i], targets[j], similarity) for j in range(b)]
        denominator = queries.new_zeros(())
        for s in scores:
            denominator = denominator + torch.exp(s)
        total = total + torch.log(torch.exp(scores[i]) / denominator)
    return -total / b


def naive_soft_triplet_both_anchors(queries, targets, similarity):
    """google/tirg's form over all negatives: the 2B features are anchors; the positive is the other member of the
    pair, the negatives every feature of another pair; the mean of log(1 + exp(kappa(a, n) - kappa(a, p)))."""
    features = list(queries) + list(targets)
    b = queries.shape[0]
    total, count = queries.new_zeros(()), 0
    for a in range(2 * b):
        positive = kappa(features[a], features[(a + b) % (2 * b)], similarity)
        for k in range(2 * b):
            if k % b != a % b:
                total = total + torch.log(1 + torch.exp(kappa(features[a], features[k], similarity) - positive))
                count += 1
    return total / count


NAIVE = {"soft_triplet": naive_soft_triplet, "batch_softmax": naive_batch_softmax}
CASES = [("soft_triplet", "l2"), ("soft_triplet", "dot"), ("batch_softmax", "dot"), ("batch_softmax", "l2")]


@pytest.mark.parametrize("batch", [2, 5])
@pytest.mark.parametrize("name,similarity", CASES)
def test_loss_value_and_gradients_match_naive_loops(name, similarity, batch):
    gen = torch.Generator().manual_seed(1234 + batch)
    queries = torch.randn(batch, 6, dtype=torch.float64, generator=gen)
    targets = torch.randn(batch, 6, dtype=torch.float64, generator=gen)
    loss_fn = compose_retrieval.create("loss", name, similarity=similarity)

    q1, t1 = queries.clone().requires_grad_(), targets.clone().requires_grad_()
    got = loss_fn(q1, t1)
    got.backward()

    q2, t2 = queries.clone().requires_grad_(), targets.clone().requires_grad_()
    expected = NAIVE[name](q2, t2, similarity)
    expected.backward()

    assert got.dim() == 0 and got.dtype == torch.float64
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(q1.grad, q2.grad)
    torch.testing.assert_close(t1.grad, t2.grad)


@pytest.mark.parametrize("name,similarity", CASES)
def test_loss_is_small_for_well_separated_matches(name, similarity):
    """Row i of the queries equal to row i of the targets, far from the others: the loss is near 0."""
    targets = 10 * torch.eye(4, dtype=torch.float64)
    loss = compose_retrieval.create("loss", name, similarity=similarity)(targets.clone(), targets)
    assert loss.item() < 1e-6
    shuffled = compose_retrieval.create("loss", name, similarity=similarity)(targets.roll(1, 0), targets)
    assert shuffled.item() > 10


def test_default_similarities_follow_google_tirg():
    assert compose_retrieval.create("loss", "soft_triplet").similarity == "l2"
    assert compose_retrieval.create("loss", "batch_softmax").similarity == "dot"


def test_soft_triplet_needs_a_negative():
    loss = compose_retrieval.create("loss", "soft_triplet")
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.randn(1, 4), torch.randn(1, 4))


@pytest.mark.parametrize("name", ["soft_triplet", "batch_softmax"])
def test_unknown_similarity_raises(name):
    with pytest.raises((ValueError, ComposeRetrievalError), match="cosine"):
        compose_retrieval.create("loss", name, similarity="cosine")


@pytest.mark.parametrize("similarity", ["l2", "dot"])
def test_soft_triplet_with_both_anchors_matches_google_tirgs_form(similarity):
    gen = torch.Generator().manual_seed(7)
    queries = torch.randn(4, 3, generator=gen, requires_grad=True)
    targets = torch.randn(4, 3, generator=gen, requires_grad=True)
    loss = compose_retrieval.create("loss", "soft_triplet", similarity=similarity, anchors="both")(queries, targets)
    expected = naive_soft_triplet_both_anchors(queries, targets, similarity)
    assert torch.allclose(loss, expected, atol=1e-5)
    grads = torch.autograd.grad(loss, [queries, targets])
    naive_grads = torch.autograd.grad(expected, [queries, targets])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, naive_grads))
