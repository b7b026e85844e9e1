"""Compositional classification end to end: css-pairs' held-out pairs, the prototype rule and the native scorer
against a direct computation, classify() and its scores, memory in blocks, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import compose_retrieval
from compose_retrieval import DatasetError, ImageFeatures, OptionError
from compose_retrieval.composition import classify, pair_prototypes
from compose_retrieval.testing import check_dataset
from compose_retrieval_css_synthetic.pairs import PAIR_SHAPES, held_out_pairs
from compose_retrieval_css_synthetic.scenes import COLORS

from conftest import TINY_CLI_MODEL, assert_one_line_error, invoke, tiny_model

TINY_PAIRS = {"train_per_pair": 2, "test_per_pair": 1, "image_size": 32, "mods_per_image": 2}


@pytest.fixture(scope="module")
def pairs_dataset():
    return compose_retrieval.create("dataset", "css-pairs", **TINY_PAIRS)


def test_the_held_out_pairs_are_new_combinations_of_known_colours_and_shapes():
    for seed in range(5):
        split = held_out_pairs(seed)
        train, val, test = (set(split[p]) for p in ("train", "val", "test"))
        assert len(train) == 30 and len(val) == 6 and len(test) == 12 and not (train & val or train & test or val & test)
        assert len(train | val | test) == len(COLORS) * len(PAIR_SHAPES)
        for c in range(len(COLORS)):
            assert sum(1 for c2, _ in train if c2 == c) >= 2  # every colour is seen with two shapes or more
        for s in range(len(PAIR_SHAPES)):
            assert sum(1 for _, s2 in train if s2 == s) == 5
    assert held_out_pairs(0) != held_out_pairs(1)


def test_css_pairs_trains_on_seen_pairs_only_and_holds_the_contract(pairs_dataset):
    d = pairs_dataset
    seen = {(COLORS[c], PAIR_SHAPES[s]) for c, s in d.pairs["train"]}
    labels = d.labels("train")
    sources, texts, targets = d.triplets
    for source, text, target in zip(sources, texts, targets):
        assert labels[source] in seen and labels[target] == (text, labels[source][1]) and text != labels[source][0]
    task = d.composition_task("pairs", "test")
    unseen = set(task.labels) - seen
    assert len(unseen) == 12 and len(set(task.labels) & seen) == 12  # the generalized split's balance
    assert len(task.candidates()) == 42 and len(task.candidates(open_world=True)) == 48
    assert task.counts == {"train": 60, "val": 12, "test": 24}
    with pytest.raises(DatasetError, match="not 'train'"):
        d.composition_task("pairs", "train")
    with pytest.raises(DatasetError, match="no classification split 'natural'; its splits: pairs"):
        d.composition_task("natural")
    with pytest.raises(DatasetError, match="offers no compositional classification"):
        compose_retrieval.create("dataset", "css-synthetic", train_scenes=4, test_scenes=2).composition_task()
    assert d.validation().name == "validation"
    check_dataset(d)


def _direct(model, task, pairs):
    """The prototype rule written out: the mean of normalised compose(x, a) over x of object o with another attribute."""
    model.eval()
    out = []
    for a, o in pairs:
        rows = [i for i, (a2, o2) in enumerate(task.train_labels) if o2 == o and a2 != a]
        if not rows:
            out.append(torch.zeros(model.spec.embed_dim))
            continue
        images = torch.stack([task.train_images[i] for i in rows])
        composed = F.normalize(model.compose(images, [task.texts[a]] * len(rows)), dim=-1)
        out.append(F.normalize(composed.mean(0), dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("combiner", ["tirg", "tirg_lastconv", "film", "image_only", "text_only", "attribute_operator"])
def test_the_prototype_rule_equals_a_direct_computation(pairs_dataset, combiner):
    model = tiny_model(combiner)
    task = pairs_dataset.composition_task("pairs", "test")
    pairs = task.candidates(open_world=True)
    with torch.no_grad():
        got, how = pair_prototypes(model, task, pairs, scorer="prototype", batch_size=7)
        want = _direct(model, task, pairs)
    assert how == {"scorer": "prototype", "pairs_without_prototype": 0}
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_attribute_operator_scores_natively_by_its_operator_on_the_object(pairs_dataset):
    model = tiny_model("attribute_operator", rank=2).eval()
    task = pairs_dataset.composition_task("pairs", "test")
    pairs = task.candidates()
    with torch.no_grad():
        got, how = pair_prototypes(model, task, pairs)  # auto: the combiner's own
        assert how["scorer"] == "native"
        want = []
        for a, o in pairs:
            images = torch.stack([task.train_images[i] for i, (a2, o2) in enumerate(task.train_labels) if o2 == o and a2 != a])
            features = model.image_encoder(images)
            objects = ImageFeatures(features.pooled.mean(0, keepdim=True), features.feature_map.mean(0, keepdim=True))
            want.append(F.normalize(model.combiner(objects, model.text_encoder([a])), dim=-1)[0])
    torch.testing.assert_close(got, torch.stack(want), atol=2e-5, rtol=1e-4)
    with pytest.raises(OptionError, match="offers no native pair scorer"):
        pair_prototypes(tiny_model("tirg"), task, pairs, scorer="native")


def test_classify_returns_cosine_scores_and_the_field_metrics(pairs_dataset):
    model = tiny_model("tirg")
    result = classify(model, pairs_dataset, phase="val", open_world=True, ks=(1, 3), batch_size=16)
    task = result.task
    assert result.scores.shape == (len(task.labels), 48) and result.scores.dtype == torch.float32
    assert [result.pairs[j] for j in result.labels] == task.labels
    with torch.no_grad():
        prototypes, _ = pair_prototypes(model, task, result.pairs)
        embeddings = F.normalize(model.embed_images(torch.stack([task.images[i] for i in range(len(task.labels))])), dim=-1)
    torch.testing.assert_close(result.scores, embeddings @ prototypes.T, atol=1e-5, rtol=1e-4)
    m = result.metrics
    assert m["task"] == "css-pairs pairs/val" and m["world"] == "open" and m["scorer"] == "prototype"
    assert {"auc", "best_hm", "best_seen", "best_unseen", "attr_acc", "obj_acc", "closed_acc", "auc_top3"} <= set(m)
    assert m["pairs"] == 48 and m["seen_pairs"] == 30 and m["unseen_images"] == 6 and m["counts"]["val"] == 12


def test_scoring_and_evaluation_hold_one_score_matrix_in_memory():
    """A scaled-down 13k x 28k: the peak grows by the (N, P) float32 matrix plus blocks of rows, not by copies of it."""
    code = textwrap.dedent("""
        import resource, torch, torch.nn.functional as F
        torch.set_num_threads(1)
        from compose_retrieval.composition import composition_metrics, score_pairs
        n, p = 12000, 3000
        g = torch.Generator().manual_seed(0)
        embeddings = F.normalize(torch.randn(n, 32, generator=g), dim=-1)
        prototypes = F.normalize(torch.randn(p, 32, generator=g), dim=-1)
        labels, seen = torch.randint(0, p, (n,), generator=g), torch.arange(p) % 3 == 0
        pairs = [(j // 100, j % 100) for j in range(p)]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scores = score_pairs(embeddings, prototypes)
        metrics = composition_metrics(scores, labels, seen, pairs, ks=(1, 5))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, scores.numel() * 4)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown, matrix = map(int, out.stdout.split())
    block = 1024 * 3000 * 4  # a block of rows of the matrix
    assert grown < matrix + 4 * block + 30e6, (grown / 1e6, matrix / 1e6)  # one more float32 copy would be 48 MB over


def test_classify_through_the_cli(tmp_path):
    run = tmp_path / "run"
    options = [f"--dataset-opt={k}={v}" for k, v in TINY_PAIRS.items()]
    result = invoke("train", "--dataset", "css-pairs", *options, *TINY_CLI_MODEL, "--run-dir", run,
                    "--combiner", "attribute_operator", "--combiner-opt", "rank=2")
    assert result.exit_code == 0, result.output
    result = invoke("classify", run, "--chance", "2", "--topk", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "native scorer" in result.output and "chance top-3" in result.output
    metrics = json.loads((run / "classification-pairs-test-closed.json").read_text())
    assert metrics["trained_on"] == "pairs" and metrics["dataset"] == "css-pairs" and "auc" in metrics["chance"]
    out = tmp_path / "open.json"
    result = invoke("classify", run, "--open-world", "--scorer", "prototype", "--output", out, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pairs"] == 48 == json.loads(out.read_text())["pairs"]
    assert_one_line_error(invoke("classify", run, "--split", "natural"), "no classification split 'natural'")
    assert_one_line_error(invoke("classify", run, "--phase", "train"), "not 'train'")
    assert_one_line_error(invoke("classify", run, "--scorer", "best"), "scorer")


def test_a_pair_whose_object_has_no_other_attribute_gets_no_prototype(pairs_dataset):
    """(red, box): the only training images of "box" are red, so no image of it shows another attribute."""
    from compose_retrieval import CompositionTask

    images = pairs_dataset.images("train")
    task = CompositionTask(
        name="tiny", images=images, labels=[("red", "box"), ("blue", "ball")] * (len(images) // 2),
        train_pairs=[("red", "box"), ("red", "ball")], phase_pairs=[("blue", "ball")],
        pairs=[("red", "box"), ("red", "ball"), ("blue", "ball")], train_images=images,
        train_labels=[("red", "box"), ("red", "ball")] * (len(images) // 2), texts={"red": "red", "blue": "blue"},
    )
    prototypes, how = pair_prototypes(tiny_model("tirg"), task, task.candidates(open_world=True))
    assert task.candidates(open_world=True) == [("blue", "ball"), ("blue", "box"), ("red", "ball"), ("red", "box")]
    assert how["pairs_without_prototype"] == 2  # red ball and red box: every image of their object is red
    assert prototypes[2:].abs().sum() == 0 and (prototypes[:2].norm(dim=1) - 1).abs().max() < 1e-5
