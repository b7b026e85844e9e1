"""Recall@K and evaluate() on protocols whose answers are known (the ranking itself: test_ranking.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compose_retrieval import DatasetError
from compose_retrieval.evaluation import evaluate, recall_at_k
from compose_retrieval.protocol import RetrievalProtocol


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


# ------------------------------------------------ batching through a DataLoader: same batches, same numbers


class JpegImages(torch.utils.data.Dataset):
    """Images decoded from JPEG files when indexed, as the real-image datasets read theirs."""

    def __init__(self, paths, preprocessing):
        self.paths, self.preprocessing = paths, preprocessing

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from compose_retrieval.data import read_image

        return self.preprocessing(read_image(self.paths[i]))


def _reference_batches(dataset, indices, batch_size):
    """The batching evaluation did before the DataLoader: one image after another in this process."""
    for start in range(0, len(indices), batch_size):
        yield start, torch.stack([dataset[i] for i in indices[start : start + batch_size].tolist()])


@pytest.fixture(scope="module")
def jpeg_protocol(tmp_path_factory):
    from PIL import Image

    from compose_retrieval import Preprocessing
    from conftest import SAMPLE_TEXTS

    folder = tmp_path_factory.mktemp("jpegs")
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(11):
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=gen).numpy()).save(paths[-1])
    images = JpegImages(paths, Preprocessing(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)))
    sources = torch.tensor([3, 0, 7, 7, 10, 1, 5, 2, 9])
    labels = torch.arange(11)
    return RetrievalProtocol(
        name="jpeg", gallery=images, query_images=images, query_sources=sources,
        query_texts=[SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(len(sources))],
        query_exclude=sources.clone(), gallery_labels={"label": labels}, query_labels={"label": (sources + 1) % 11},
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_dataloader_gives_what_one_by_one_decoding_gave(jpeg_protocol, num_workers):
    from compose_retrieval.evaluation import compose_queries, embed_gallery
    from conftest import tiny_model

    model = tiny_model("tirg").eval()
    protocol = jpeg_protocol
    as_before = lambda images: images.contiguous(memory_format=torch.channels_last)  # noqa: E731 (as the old code fed them)
    with torch.no_grad():
        gallery = torch.cat([nn.functional.normalize(model.embed_images(as_before(images)).float(), dim=-1)
                             for _, images in _reference_batches(protocol.gallery, torch.arange(11), 4)])
        queries = torch.cat([
            nn.functional.normalize(model.compose(as_before(images), protocol.query_texts[start : start + len(images)]).float(), dim=-1)
            for start, images in _reference_batches(protocol.query_images, protocol.query_sources, 4)])
    assert torch.equal(embed_gallery(model, protocol.gallery, 4, "cpu", num_workers), gallery)
    assert torch.equal(compose_queries(model, protocol, 4, "cpu", num_workers), queries)
    metrics = evaluate(model, protocol, batch_size=4, device="cpu", num_workers=num_workers)
    assert metrics == evaluate(model, protocol, batch_size=4, device="cpu")


def test_a_negative_number_of_workers_is_refused_in_one_line():
    protocol, images = _protocol()
    with pytest.raises(Exception, match="num_workers=-1 must be") as info:
        evaluate(LookupModel(images, "oracle"), protocol, num_workers=-1)
    assert "\n" not in str(info.value)


def test_evaluate_checkpoint_hands_num_workers_to_evaluate(tmp_path, monkeypatch):
    import compose_retrieval
    from compose_retrieval import evaluation
    from conftest import TINY_DATASET, tiny_model

    path = compose_retrieval.save_pretrained(
        tiny_model("concat").eval(), tmp_path / "tiny.safetensors",
        recipe={"dataset": "css-synthetic", "dataset_options": dict(TINY_DATASET)})
    seen = []
    monkeypatch.setattr(evaluation, "evaluate", lambda model, protocol, **options: seen.append(options) or {})
    evaluation.evaluate_checkpoint(path, device="cpu", batch_size=8, num_workers=3)
    assert len(seen) == 1 and seen[0]["num_workers"] == 3 and seen[0]["batch_size"] == 8


def test_evaluate_from_the_cli_ranks_with_faiss_as_with_torch(tmp_path):
    import compose_retrieval
    from conftest import TINY_DATASET, tiny_model
    from typer.testing import CliRunner

    from compose_retrieval.cli import app

    path = compose_retrieval.save_pretrained(
        tiny_model("concat").eval(), tmp_path / "tiny.safetensors",
        recipe={"dataset": "css-synthetic", "dataset_options": dict(TINY_DATASET)})
    results = {}
    for backend in ("torch", "faiss"):
        result = CliRunner().invoke(app, ["evaluate", str(path), "--device", "cpu", "--json", "--ranking-backend", backend])
        assert result.exit_code == 0, result.output
        results[backend] = json.loads(result.output)
    assert results["torch"] == results["faiss"] and "recall@1" in results["torch"]
    result = CliRunner().invoke(app, ["evaluate", str(path), "--device", "cpu", "--ranking-backend", "annoy"])
    assert result.exit_code == 1 and "ranking_backend" in result.output and "annoy" in result.output
