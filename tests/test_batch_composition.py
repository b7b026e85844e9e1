"""Batch composition: google/tirg's batches of sources that each come with two different texts, for any dataset."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import compose_retrieval
from compose_retrieval import DatasetError, OptionError
from compose_retrieval.checkpoint import read_metadata
from compose_retrieval.batching import SameSourceBatches
from compose_retrieval.data import Triplets
from compose_retrieval.batching import training_loader
from compose_retrieval.rundir import CHECKPOINT_NAME
from compose_retrieval.training import train
from compose_retrieval_css_synthetic.cssfiles import write_css

from conftest import TINY_DATASET, tiny_config
from test_public_datasets import SIZE, make_fashion200k, make_mitstates


def _batches(dataset, per_source: int, workers: int, n: int = 4, batch_size: int = 8) -> list[dict]:
    config = dataclasses.replace(tiny_config(), batch_size=batch_size, mods_per_source=per_source, num_workers=workers, seed=3)
    loader = training_loader(dataset.train_set(seed=3), config, torch.device("cpu"))
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def assert_grouped(batches: list[dict], per_source: int) -> None:
    """Every group of ``per_source`` consecutive items shares its source image and has ``per_source`` different texts."""
    for batch in batches:
        sources, texts = batch["source"], batch["text"]
        assert sources.shape[0] == len(texts) == batch["target"].shape[0]
        for g in range(0, len(texts), per_source):
            assert all(torch.equal(sources[g], sources[g + i]) for i in range(per_source))
            assert len(set(texts[g : g + per_source])) == per_source, texts[g : g + per_source]


@pytest.fixture(scope="module")
def css(tmp_path_factory):
    root = write_css(compose_retrieval.create("dataset", "css-synthetic", **TINY_DATASET), tmp_path_factory.mktemp("css") / "CSS")
    return compose_retrieval.create("dataset", "css", data_root=str(root))


@pytest.fixture(scope="module")
def mitstates(tmp_path_factory):
    root = make_mitstates(tmp_path_factory.mktemp("mitstates"))
    return compose_retrieval.create("dataset", "mitstates", data_root=str(root), image_size=SIZE)


@pytest.mark.parametrize("name", ["css", "mitstates"])
def test_the_authors_datasets_pair_every_source_with_two_texts_by_default_with_any_workers(name, request):
    dataset = request.getfixturevalue(name)
    assert dataset.mods_per_source == 2  # google/tirg's composition is the default where google/tirg does it
    batches = _batches(dataset, dataset.mods_per_source, workers=0)
    assert_grouped(batches, 2)
    with_workers = _batches(dataset, dataset.mods_per_source, workers=2)
    assert_grouped(with_workers, 2)
    for a, b in zip(batches, with_workers):  # the same batches, whatever process drew them
        assert a["text"] == b["text"] and torch.equal(a["source"], b["source"]) and torch.equal(a["target"], b["target"])


def test_every_dataset_can_group_its_pairs(tiny_dataset, tmp_path):
    assert tiny_dataset.mods_per_source == 2  # css-synthetic imitates CSS, batches included
    assert compose_retrieval.registry.get_entry("dataset", "triplets").factory.mods_per_source == 1  # a user's own: independent pairs
    assert_grouped(_batches(tiny_dataset, 2, workers=0), 2)
    four = compose_retrieval.create("dataset", "css-synthetic", **{**TINY_DATASET, "mods_per_scene": 4})
    assert_grouped(_batches(four, 4, workers=0), 4)  # each source of css-synthetic has mods_per_scene texts
    fashion = compose_retrieval.create("dataset", "fashion200k", data_root=str(make_fashion200k(tmp_path)), image_size=SIZE)
    assert_grouped(_batches(fashion, 2, workers=0, batch_size=4), 2)


def test_a_group_keeps_the_datasets_targets():
    """Each pair of a group is one of the training set's own (source, text, target) triplets."""
    images = torch.zeros(6, 3, 4, 4)
    train_set = Triplets(images, [0, 0, 0, 1, 1], ["a", "b", "c", "a", "d"], [2, 3, 4, 5, 2])
    known = {(0, "a", 2), (0, "b", 3), (0, "c", 4), (1, "a", 5), (1, "d", 2)}
    batches = SameSourceBatches(train_set, batch_size=4, per_source=2, seed=0)
    for index in range(len(batches) + 3):
        items = batches.triplets(index)
        assert len(items) == 4 and set(items) <= known
        assert items[0][0] == items[1][0] and items[0][1] != items[1][1]
    assert batches.triplets(1) == SameSourceBatches(train_set, 4, 2, seed=0).triplets(1)  # fixed by (seed, index)


def test_impossible_compositions_are_one_line():
    train_set = Triplets(torch.zeros(4, 3, 4, 4), [0, 1], ["a", "b"], [2, 3])  # one text per source
    with pytest.raises(DatasetError, match="has 2 different texts; lower --mods-per-source"):
        SameSourceBatches(train_set, batch_size=2, per_source=2, tries=20).triplets(0)
    with pytest.raises(DatasetError, match="choose --mods-per-source dividing --batch-size"):
        SameSourceBatches(train_set, batch_size=5, per_source=2)
    with pytest.raises(OptionError, match="--mods-per-source 3 must divide --batch-size 8"):
        dataclasses.replace(tiny_config(), mods_per_source=3).validate()
    with pytest.raises(OptionError, match="mods_per_source=0 must be between 1"):
        dataclasses.replace(tiny_config(), mods_per_source=0).validate()


def test_the_run_records_its_batch_composition(tmp_path):
    result = train(tiny_config(steps=4, mods_per_source=2, run_dir=str(tmp_path / "grouped")), progress=False)
    assert result.config.mods_per_source == 2
    assert json.loads((tmp_path / "grouped" / "config.json").read_text())["mods_per_source"] == 2
    assert read_metadata(tmp_path / "grouped" / CHECKPOINT_NAME)["recipe"]["mods_per_source"] == 2
    # left to the dataset, the value it resolved to is what the run records
    result = train(tiny_config(steps=4, run_dir=str(tmp_path / "default")), progress=False)
    assert read_metadata(tmp_path / "default" / CHECKPOINT_NAME)["recipe"]["mods_per_source"] == 2
    result = train(tiny_config(steps=4, mods_per_source=1, run_dir=str(tmp_path / "independent")), progress=False)
    assert read_metadata(tmp_path / "independent" / CHECKPOINT_NAME)["recipe"]["mods_per_source"] == 1
