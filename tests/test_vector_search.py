"""Vector search (compose_retrieval.vector_search): FAISS flat equals exact search, exclusion, k beyond the
vectors, the approximate backends' recall on clustered data, saving and loading, and one-line errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from compose_retrieval import ComposeRetrievalError, OptionError
from compose_retrieval.vector_search import SEARCH_BACKENDS, VECTORS_FILE, VectorSearch, check_backend

FAISS_BACKENDS = [b for b in SEARCH_BACKENDS if b != "exact"]


def unit(num, dim, seed=0):
    return F.normalize(torch.randn(num, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def clustered(num, dim, clusters, seed=0, noise=0.15):
    """Unit vectors around ``clusters`` random centres: the structure IVF and HNSW rely on."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=gen), dim=1)
    which = torch.randint(0, clusters, (num,), generator=gen)
    return F.normalize(centres[which] + noise * torch.randn(num, dim, generator=gen) / dim**0.5, dim=1)


def needs_faiss(backend):
    if backend != "exact":
        pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def vectors():
    return unit(2000, 32)


# ------------------------------------------------------------------------------------------------ exactness


def test_flat_returns_the_exact_top_k(vectors):
    pytest.importorskip("faiss")
    queries, k = unit(60, 32, seed=1), 10
    # keep the queries whose top k + 1 similarities are at least 1e-4 apart: no near-tie that rounding could swap
    top = torch.sort(queries.double() @ vectors.double().T, dim=1, descending=True).values[:, : k + 1]
    clear = (top[:, :-1] - top[:, 1:]).min(1).values > 1e-4
    assert clear.sum() >= 40
    queries = queries[clear]
    exact_scores, exact_ids = VectorSearch(vectors, "exact").search(queries, k)
    flat_scores, flat_ids = VectorSearch(vectors, "flat").search(queries, k)
    assert flat_ids.dtype == exact_ids.dtype == torch.int64 and flat_scores.dtype == torch.float32
    assert flat_ids.shape == (len(queries), k)
    assert torch.equal(flat_ids, exact_ids)
    torch.testing.assert_close(flat_scores, exact_scores, atol=1e-5, rtol=0)
    # the scores are the inner products of the returned vectors, best first
    torch.testing.assert_close(exact_scores, torch.einsum("qd,qkd->qk", queries, vectors[exact_ids]), atol=1e-5, rtol=0)
    assert bool((exact_scores[:, :-1] >= exact_scores[:, 1:]).all())


@pytest.mark.parametrize("backend", SEARCH_BACKENDS)
def test_exclusion(backend, vectors):
    needs_faiss(backend)
    search = VectorSearch(vectors, backend)
    queries = vectors[:30]  # each query is a vector of the set: its own best match
    exclude = torch.arange(30)
    exclude[::3] = -1  # these exclude nothing and find themselves first
    scores, ids = search.search(queries, 5, exclude)
    assert ids.shape == (30, 5)
    assert not bool((ids == exclude[:, None]).any())
    kept = exclude < 0
    assert torch.equal(ids[kept, 0], torch.arange(30)[kept])
    torch.testing.assert_close(scores[kept, 0], torch.ones(int(kept.sum())), atol=1e-5, rtol=0)
    # with exclusion, the rest of the ranking is the ranking without it, less the excluded id
    _, plain = search.search(queries, 6)
    for i in torch.nonzero(~kept).squeeze(1).tolist():
        assert ids[i].tolist() == [j for j in plain[i].tolist() if j != i][:5]


@pytest.mark.parametrize("backend", SEARCH_BACKENDS)
def test_k_beyond_the_vectors_returns_them_all(backend):
    needs_faiss(backend)
    vectors = unit(50, 16, seed=2)
    search = VectorSearch(vectors, backend)
    scores, ids = search.search(unit(4, 16, seed=3), 100)
    assert ids.shape == scores.shape == (4, 50)
    found = ids >= 0
    assert torch.equal(torch.isinf(scores), ~found)  # any id not found is -1 with score -inf, at the end
    for row in ids.tolist():
        assert len(set(row) - {-1}) == len([j for j in row if j >= 0])
    if backend in ("exact", "flat"):
        assert all(sorted(row) == list(range(50)) for row in ids.tolist())
    _, ids = search.search(vectors[:4], 100, torch.arange(4))
    assert ids.shape == (4, 49) and not bool((ids == torch.arange(4)[:, None]).any())
    _, ids = search.search(vectors[:4], 0)
    assert ids.shape == (4, 0)


@pytest.mark.parametrize("backend", ["ivf", "hnsw"])
def test_approximate_recall_on_clustered_data(backend):
    pytest.importorskip("faiss")
    points = clustered(4100, 32, clusters=40)
    data, queries = points[:4000], points[4000:]  # queries: other points around the same centres
    _, truth = VectorSearch(data, "exact").search(queries, 10)
    search = VectorSearch(data, backend)
    _, found = search.search(queries, 10)
    recall = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist())) / truth.numel()
    assert recall > 0.9, recall


# ------------------------------------------------------------------------------------------------ options


def test_resolved_options():
    pytest.importorskip("faiss")
    vectors = unit(2000, 16)
    ivf = VectorSearch(vectors, "ivf")
    assert ivf.options == {"nlist": 51, "nprobe": 16}  # 4 sqrt(2000) = 179, but at most 2000 / 39 = 51
    assert ivf.index.nlist == 51 and ivf.index.nprobe == 16
    assert VectorSearch(vectors[:30], "ivf").options == {"nlist": 1, "nprobe": 1}  # too few to split: one list
    assert VectorSearch(vectors, "ivf", nlist=8, nprobe=4).options == {"nlist": 8, "nprobe": 4}
    hnsw = VectorSearch(vectors, "hnsw", m=8, ef_search=20)
    assert hnsw.options == {"m": 8, "ef_construction": 80, "ef_search": 20}
    assert hnsw.index.hnsw.efSearch == 20 and hnsw.index.hnsw.efConstruction == 80
    assert VectorSearch(vectors, "flat").options == VectorSearch(vectors).options == {}
    json.dumps(hnsw.options), json.dumps(ivf.options)


@pytest.mark.parametrize("backend, options, expected", [
    ("hnws", {}, "Did you mean 'hnsw'?"),
    ("faiss", {}, "Available: exact, flat, ivf, hnsw."),
    ("hnsw", {"ef_serch": 10}, "Did you mean 'ef_search'?"),
    ("hnsw", {"ef": 10}, "Did you mean 'ef_construction' or 'ef_search'?"),
    ("flat", {"nprobe": 4}, "Its options: none."),
    ("ivf", {"nprobe": 0}, "nprobe=0 must be between 1"),
    ("ivf", {"nprobe": "16"}, "nprobe='16' is not int"),
    ("hnsw", {"m": True}, "m=True is not int"),
    ("ivf", {"nlist": 5000}, "more than the 2000 vectors"),
])
def test_bad_backend_or_option_is_one_line(backend, options, expected):
    if backend in ("ivf",) and "nlist" in options:
        pytest.importorskip("faiss")
    with pytest.raises(OptionError) as info:
        VectorSearch(unit(2000, 16), backend, **options)
    assert expected in str(info.value) and "\n" not in str(info.value)
    if "nlist" not in options:  # the same error before any vector exists
        with pytest.raises(OptionError, match=expected.replace("?", r"\?").replace("(", r"\(")):
            check_backend(backend, options)


def test_ivf_needs_vectors_to_train_on():
    with pytest.raises(ComposeRetrievalError, match="needs vectors to train on"):
        VectorSearch(torch.empty(0, 16), "ivf")
    scores, ids = VectorSearch(torch.empty(0, 16)).search(unit(3, 16), 5)  # exact: nothing to find
    assert ids.shape == scores.shape == (3, 0)


def test_faiss_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    vectors = unit(100, 16)
    with pytest.raises(ComposeRetrievalError) as info:
        VectorSearch(vectors, "hnsw")
    message = str(info.value)
    assert "\n" not in message and 'pip install "compose-retrieval[faiss]"' in message
    VectorSearch(vectors, "exact").search(vectors[:2], 3)  # exact search needs no FAISS
    check_backend("exact")
    with pytest.raises(ComposeRetrievalError, match="compose-retrieval\\[faiss\\]"):
        check_backend("ivf", {"nprobe": 8})


# ------------------------------------------------------------------------------------------------ saving


@pytest.mark.parametrize("backend", SEARCH_BACKENDS)
def test_save_and_load_give_identical_results(backend, tmp_path, vectors):
    needs_faiss(backend)
    options = {"hnsw": {"m": 16, "ef_search": 32}, "ivf": {"nprobe": 4}}.get(backend, {})
    search = VectorSearch(vectors, backend, **options)
    search.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if backend == "exact" else [VECTORS_FILE])
    loaded = VectorSearch.load(tmp_path, vectors, backend, json.loads(json.dumps(search.options)))
    assert loaded.backend == backend and loaded.options == search.options
    queries, exclude = unit(40, 32, seed=5), torch.randint(0, 2000, (40,), generator=torch.Generator().manual_seed(5))
    for got, want in zip(loaded.search(queries, 10, exclude), search.search(queries, 10, exclude)):
        assert torch.equal(got, want)
    search.save(tmp_path)  # saving again replaces the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if backend == "exact" else [VECTORS_FILE])


@pytest.mark.parametrize("backend", FAISS_BACKENDS)
def test_missing_or_corrupt_index_file_is_one_line(backend, tmp_path, vectors):
    pytest.importorskip("faiss")
    search = VectorSearch(vectors, backend)
    with pytest.raises(ComposeRetrievalError, match="vectors.faiss is missing: rebuild the index") as info:
        VectorSearch.load(tmp_path, vectors, backend, search.options)
    search.save(tmp_path)
    path = tmp_path / VECTORS_FILE
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(ComposeRetrievalError) as info:
        VectorSearch.load(tmp_path, vectors, backend, search.options)
    message = str(info.value)
    assert str(path) in message and "rebuild the index (compose-retrieval index" in message and "\n" not in message
    path.write_bytes(b"not an index at all")
    with pytest.raises(ComposeRetrievalError, match="cannot be read"):
        VectorSearch.load(tmp_path, vectors, backend, search.options)


def test_an_index_file_of_other_vectors_or_backend_is_refused(tmp_path, vectors):
    pytest.importorskip("faiss")
    VectorSearch(vectors, "hnsw", m=8).save(tmp_path)
    with pytest.raises(ComposeRetrievalError, match="holds 2000 vectors of 32 dimensions, not 1999 of 32"):
        VectorSearch.load(tmp_path, vectors[:-1], "hnsw", {"m": 8})
    with pytest.raises(ComposeRetrievalError, match="is a IndexHNSWFlat, not the ivf inner-product index"):
        VectorSearch.load(tmp_path, vectors, "ivf", {"nlist": 51, "nprobe": 16})
    with pytest.raises(ComposeRetrievalError, match="has m=8, not m=32"):
        VectorSearch.load(tmp_path, vectors, "hnsw", {"m": 32})
    with pytest.raises(OptionError, match="Did you mean 'hnsw'"):
        VectorSearch.load(tmp_path, vectors, "hnws", {})


def test_search_time_options_change_without_rebuilding():
    pytest.importorskip("faiss")
    points = clustered(3100, 32, clusters=30, seed=4)
    data, queries = points[:3000], points[3000:]
    _, truth = VectorSearch(data, "exact").search(queries, 10)

    def recall(search):
        _, found = search.search(queries, 10)
        return sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist())) / truth.numel()

    ivf = VectorSearch(data, "ivf", nprobe=1)
    narrow = recall(ivf)
    ivf.set_search_options(nprobe=10_000)  # every list: exact
    assert ivf.options == {"nlist": 76, "nprobe": 76} and ivf.index.nprobe == 76
    assert recall(ivf) == 1.0 > narrow
    hnsw = VectorSearch(data, "hnsw", m=4, ef_search=1)
    hnsw.set_search_options(ef_search=200)
    assert hnsw.index.hnsw.efSearch == 200 and hnsw.options["ef_search"] == 200
    with pytest.raises(OptionError, match="'m' is set when the index is built"):
        hnsw.set_search_options(m=8)
    with pytest.raises(OptionError, match="Did you mean 'ef_search'"):
        hnsw.set_search_options(ef_serch=8)
