"""Ranking in chunks, recall@K, and evaluate() on protocols whose answers are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compose_retrieval import DatasetError
from compose_retrieval.evaluation import evaluate, recall_at_k, top_k
from compose_retrieval.protocol import RetrievalProtocol


def _reference_ranking(queries, gallery, exclude, k):
    sims = queries @ gallery.T
    rows = []
    for i in range(queries.shape[0]):
        order = [j for j in torch.argsort(sims[i], descending=True).tolist() if j != int(exclude[i])]
        rows.append(order[:k])
    return torch.tensor(rows)


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_top_k_in_chunks_equals_full_argsort(chunk):
    gen = torch.Generator().manual_seed(chunk)
    queries = torch.randn(23, 8, generator=gen, dtype=torch.float64)
    gallery = torch.randn(17, 8, generator=gen, dtype=torch.float64)
    exclude = torch.randint(0, 17, (23,), generator=gen)
    exclude[::5] = -1  # some queries exclude nothing
    ranked = top_k(queries, gallery, 6, exclude, chunk=chunk)
    assert ranked.shape == (23, 6) and ranked.dtype == torch.long
    assert torch.equal(ranked, _reference_ranking(queries, gallery, exclude, 6))
    for i in range(23):
        assert int(exclude[i]) not in ranked[i].tolist()


def test_top_k_without_exclusion_and_with_k_beyond_gallery():
    gen = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(9, 4, generator=gen), torch.randn(5, 4, generator=gen)
    full = top_k(queries, gallery, 100, chunk=2)
    assert torch.equal(full, torch.argsort(queries @ gallery.T, dim=1, descending=True))

    exclude = torch.arange(9) % 5
    ranked = top_k(queries, gallery, 100, exclude, chunk=4)
    assert ranked.shape == (9, 4)  # every gallery image but the excluded one
    for i in range(9):
        assert sorted(ranked[i].tolist()) == [j for j in range(5) if j != int(exclude[i])]


def test_recall_at_k_hand_made():
    ranked = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]])
    gallery_labels = torch.tensor([5, 6, 7])
    query_labels = torch.tensor([6, 5, 9, 7])
    # first hits: query 0 at rank 2, query 1 at rank 3, query 2 never, query 3 at rank 1
    recall = recall_at_k(ranked, gallery_labels, query_labels, (1, 2, 3))
    assert recall == pytest.approx({1: 1 / 4, 2: 2 / 4, 3: 3 / 4})


def test_recall_at_k_is_zero_without_a_hit_even_when_k_exceeds_the_ranking():
    """K larger than the ranked list (a small gallery) must not turn a miss into a hit."""
    ranked = torch.tensor([[0, 1, 2], [1, 2, 0]])
    recall = recall_at_k(ranked, torch.tensor([5, 6, 7]), torch.tensor([9, 7]), (1, 3, 4, 50))
    assert recall == pytest.approx({1: 0.0, 3: 0.5, 4: 0.5, 50: 0.5})


def test_evaluate_with_k_beyond_the_gallery_counts_only_real_hits():
    """Queries whose only hit is their excluded source: recall@50 and @100 of a 12-image gallery stay 0."""
    protocol, images = _protocol(labels_of="source")
    metrics = evaluate(LookupModel(images, "image_only"), protocol)
    assert metrics["recall@50"] == 0.0 and metrics["recall@100"] == 0.0


def test_recall_counts_a_query_once_with_several_hits():
    ranked = torch.tensor([[0, 1, 2, 3]])
    recall = recall_at_k(ranked, torch.tensor([1, 1, 1, 0]), torch.tensor([1]), (1, 4))
    assert recall == {1: 1.0, 4: 1.0}


class LookupModel(nn.Module):
    """A model that embeds an image by flattening it and composes a query by a rule on its text."""

    def __init__(self, gallery_images: torch.Tensor, mode: str):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.gallery_images, self.mode = gallery_images, mode

    def embed_images(self, images):
        return images.flatten(1) + self.dummy

    def compose(self, images, texts):
        if self.mode == "oracle":  # the text names the target: return its embedding exactly
            return self.embed_images(self.gallery_images[[int(t) for t in texts]])
        return self.embed_images(images)  # image only: the source's own embedding


def _protocol(n_gallery=12, n_queries=30, seed=0, labels_of="target"):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n_gallery, 3, 2, 2, generator=gen)
    sources = torch.randint(0, n_gallery, (n_queries,), generator=gen)
    targets = (sources + torch.randint(1, n_gallery, (n_queries,), generator=gen)) % n_gallery  # never the source
    gallery_labels = torch.arange(n_gallery)
    query_labels = targets if labels_of == "target" else sources
    protocol = RetrievalProtocol(
        name="toy",
        gallery=images,
        query_images=images,
        query_sources=sources,
        query_texts=[str(int(t)) for t in targets],
        query_exclude=sources.clone(),
        gallery_labels={"label": gallery_labels, "parity": gallery_labels % 2},
        query_labels={"label": query_labels, "parity": query_labels % 2},
    )
    return protocol, images


@pytest.mark.parametrize("batch_size", [4, 256])
def test_evaluate_oracle_gives_perfect_recall(batch_size):
    protocol, images = _protocol()
    model = LookupModel(images, "oracle")
    model.train()
    metrics = evaluate(model, protocol, batch_size=batch_size)
    assert model.training  # evaluation restores the mode it found
    assert metrics["protocol"] == "toy" and metrics["queries"] == 30 and metrics["gallery"] == 12
    for k in protocol.ks:
        assert metrics[f"recall@{k}"] == 1.0
        assert metrics[f"parity_recall@{k}"] == 1.0


def test_evaluate_never_ranks_the_query_source():
    """Queries labelled with their own source image: the only hit is excluded, so recall is 0."""
    protocol, images = _protocol(labels_of="source")
    protocol.gallery_labels = {"label": protocol.gallery_labels["label"]}
    protocol.query_labels = {"label": protocol.query_labels["label"]}
    metrics = evaluate(LookupModel(images, "image_only"), protocol)
    assert metrics["recall@1"] == metrics["recall@5"] == metrics["recall@10"] == 0.0

    protocol.query_exclude = torch.full_like(protocol.query_exclude, -1)  # no exclusion: the source ranks first
    metrics = evaluate(LookupModel(images, "image_only"), protocol)
    assert metrics["recall@1"] == 1.0


def test_protocol_validates_lengths():
    protocol, images = _protocol()
    with pytest.raises(DatasetError, match="differ in length"):
        RetrievalProtocol("bad", images, images, protocol.query_sources[:-1], protocol.query_texts,
                          protocol.query_exclude, protocol.gallery_labels, protocol.query_labels)
