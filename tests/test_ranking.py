"""The ranking (compose_retrieval.ranking.top_k) against a naive full-matrix stable argsort, and its FAISS backend."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import compose_retrieval.ranking as ranking
from compose_retrieval import ComposeRetrievalError, OptionError
from compose_retrieval.evaluation import evaluate
from compose_retrieval.protocol import RetrievalProtocol
from compose_retrieval.ranking import top_k


def naive(queries, gallery, k, exclude=None):
    """Every similarity at once, the excluded item at -inf, rows sorted (stably: ties by lower index)."""
    sims = (queries @ gallery.T).clone()
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).squeeze(1)
        sims[rows, exclude[rows]] = float("-inf")
    k = min(k, gallery.shape[0] - (1 if exclude is not None else 0))
    return torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]


def data(num_queries, size, dim=8, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(num_queries, dim, generator=gen, dtype=dtype)
    gallery = torch.randn(size, dim, generator=gen, dtype=dtype)
    exclude = torch.randint(0, size, (num_queries,), generator=gen)
    exclude[::5] = -1  # some queries exclude nothing
    return queries, gallery, exclude


@pytest.fixture
def selections(monkeypatch):
    """How many chunks the block selection ranked (the rest were small enough to sort whole)."""
    calls = []
    select = ranking._select

    def counted(*args):
        calls.append(1)
        return select(*args)

    monkeypatch.setattr(ranking, "_select", counted)
    return calls


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_chunks_equal_the_full_argsort(chunk, selections):
    queries, gallery, exclude = data(23, 61)  # 23 queries: no chunk but 1 divides them; 61 items: a padded last block
    for ex in (exclude, None):
        ranked = top_k(queries, gallery, 6, ex, chunk=chunk)
        assert ranked.shape == (23, 6) and ranked.dtype == torch.long
        assert torch.equal(ranked, naive(queries, gallery, 6, ex))
        if ex is not None:
            assert all(int(ex[i]) not in ranked[i].tolist() for i in range(23))
    assert selections  # the block selection ran, not only the whole-row sort


def test_exclusion_minus_one_means_none():
    queries, gallery, _ = data(9, 40)
    none = torch.full((9,), -1)
    assert torch.equal(top_k(queries, gallery, 5, none, chunk=4), top_k(queries, gallery, 5, chunk=4))
    assert torch.equal(top_k(queries, gallery, 5, none, chunk=4), naive(queries, gallery, 5))


def test_k_beyond_the_gallery_returns_every_item():
    queries, gallery, exclude = data(9, 5, dim=4)
    full = top_k(queries, gallery, 100, chunk=2)
    assert torch.equal(full, torch.argsort(queries @ gallery.T, dim=1, descending=True))
    ranked = top_k(queries, gallery, 100, exclude, chunk=4)
    assert ranked.shape == (9, 4)  # every gallery item but the excluded one (4 of 5 where none is excluded)
    assert torch.equal(ranked, naive(queries, gallery, 100, exclude))
    for i in torch.nonzero(exclude >= 0).squeeze(1).tolist():
        assert sorted(ranked[i].tolist()) == [j for j in range(5) if j != int(exclude[i])]
    # an exclusion tensor that excludes nothing (-1 everywhere) takes nothing away: all 5, on both backends
    none = torch.full((9,), -1)
    assert torch.equal(top_k(queries, gallery, 100, none, chunk=2), full)
    assert top_k(queries, gallery, 100, none, backend="faiss").shape == (9, 5)


@pytest.mark.parametrize("k", [59, 20])
def test_k_up_to_the_gallery_less_the_excluded_item(k):
    queries, gallery, exclude = data(11, 60, seed=k)
    ranked = top_k(queries, gallery, k, exclude, chunk=3)
    assert ranked.shape == (11, k)
    assert torch.equal(ranked, naive(queries, gallery, k, exclude))


def test_ties_rank_the_lower_gallery_index_first(selections):
    gen = torch.Generator().manual_seed(3)
    queries = torch.randint(-1, 2, (17, 3), generator=gen).float()  # few distinct similarities: many ties
    gallery = torch.randint(-1, 2, (200, 3), generator=gen).float()
    exclude = torch.randint(-1, 200, (17,), generator=gen)
    assert torch.equal(top_k(queries, gallery, 30, exclude, chunk=5), naive(queries, gallery, 30, exclude))
    assert selections


def test_single_precision_and_a_nan_query():
    queries, gallery, exclude = data(12, 90, dtype=torch.float32)
    queries[4, 0] = float("nan")  # its similarities are all NaN: that chunk is sorted whole, as the naive ranking does
    assert torch.equal(top_k(queries, gallery, 7, exclude, chunk=5), naive(queries, gallery, 7, exclude))


def test_empty_and_bad_arguments():
    queries, gallery, exclude = data(4, 10)
    assert top_k(queries[:0], gallery, 3).shape == (0, 3)
    assert top_k(queries, gallery, 0).shape == (4, 0)
    with pytest.raises(OptionError, match="outside -1..9"):
        top_k(queries, gallery, 3, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(OptionError, match="4 integer gallery indices"):
        top_k(queries, gallery, 3, torch.tensor([0, 1]))
    with pytest.raises(OptionError, match="8 dimensions and the gallery 5"):
        top_k(queries, gallery[:, :5], 3)
    with pytest.raises(OptionError, match="did you mean|is not one of"):
        top_k(queries, gallery, 3, backend="fais")


# ------------------------------------------------------------------------------------------------ FAISS


def test_faiss_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    queries, gallery, exclude = data(4, 10)
    with pytest.raises(ComposeRetrievalError) as info:
        top_k(queries, gallery, 3, exclude, backend="faiss")
    message = str(info.value)
    assert "\n" not in message and 'pip install "compose-retrieval[faiss]"' in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("k", [1, 6, 59, 100])
def test_faiss_ranks_as_torch(k):
    faiss = pytest.importorskip("faiss")
    queries, gallery, exclude = data(23, 60, dim=16, dtype=torch.float32)
    for ex in (exclude, None):
        ranked = top_k(queries, gallery, k, ex, backend="faiss")
        assert torch.equal(ranked, top_k(queries, gallery, k, ex, chunk=7))
    index = faiss.IndexFlatIP(16)  # a caller's own index (say, memory-mapped from disk) is searched as it is
    index.add(gallery.numpy())
    assert torch.equal(top_k(queries, index, k, exclude, backend="faiss"), top_k(queries, gallery, k, exclude))


class _Flatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def embed_images(self, images):
        return images.flatten(1) + self.dummy

    def compose(self, images, texts):
        shift = torch.tensor([[float(len(t)), 0.0, 0.0, 0.0] for t in texts])  # the text moves the query
        return self.embed_images(images) + shift


def test_evaluate_takes_the_faiss_backend():
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(40, 1, 2, 2, generator=gen)
    sources = torch.randint(0, 40, (25,), generator=gen)
    labels = torch.arange(40) % 7
    protocol = RetrievalProtocol(
        name="toy", gallery=images, query_images=images, query_sources=sources,
        query_texts=["ab" * (i % 3) for i in range(25)], query_exclude=sources.clone(),
        gallery_labels={"label": labels}, query_labels={"label": labels[sources]},
    )
    model = _Flatten()
    assert evaluate(model, protocol, ranking_backend="faiss") == evaluate(model, protocol)
    with pytest.raises(OptionError, match="ranking_backend"):
        evaluate(model, protocol, ranking_backend="annoy")
