"""Fashion200k and MIT-States on tiny trees in their published layouts: counts, pairing, queries, hit rules, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import compose_retrieval
from compose_retrieval import DatasetError

from conftest import assert_workers_give_valid_pairs
from compose_retrieval_datasets.fashion200k import clean_caption, different_words

SIZE = 16


def _jpeg(path: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (SIZE, SIZE, 3), generator=g, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# ---------------------------------------------------------------- Fashion200k

TRAIN_CAPTIONS = ["blue floral dress", "red floral dress", "blue striped dress", "red striped dress", "green maxi dress."]
TEST_CAPTIONS = ["black lace dress", "white lace dress", "white lace dress", "black silk dress"]


def make_fashion200k(root: Path) -> Path:
    for split, captions in (("train", TRAIN_CAPTIONS), ("test", TEST_CAPTIONS)):
        lines = []
        for i, caption in enumerate(captions):
            for shot in range(2 if split == "train" else 1):
                rel = f"women/dresses/casual_and_day_dresses/{split}{i}/{shot}.jpeg"
                _jpeg(root / rel, 100 * (split == "test") + 10 * i + shot)
                lines.append(f"{rel}\t0.9{i}\t{caption}")
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"dress_{split}_detect_all.txt").write_text("\n".join(lines) + "\n")
    d = "women/dresses/casual_and_day_dresses"
    (root / "test_queries.txt").write_text(f"{d}/test0/0.jpeg {d}/test1/0.jpeg\n{d}/test2/0.jpeg {d}/test3/0.jpeg\n")
    return root


def fashion(root: Path, **options):
    return compose_retrieval.create("dataset", "fashion200k", data_root=str(root), image_size=SIZE, **options)


def test_fashion200k_captions_words_and_counts(tmp_path):
    assert clean_caption(" a.b? c&d*e \n") == "adotmarkbquestionmark candmarkdstarmarke"
    assert different_words("blue floral dress", "red floral dress") == ("blue", "red", "replace blue with red")
    assert different_words("blue dress", "blue dress")[2] == "replace dress with dress"  # google/tirg's fallback
    dataset = fashion(make_fashion200k(tmp_path))
    assert len(dataset.images["train"]) == 10 and len(dataset.images["test"]) == 4
    assert "green maxi dressdotmark" in dataset.train_texts()


def test_fashion200k_training_pairs_are_siblings(tmp_path):
    dataset = fashion(make_fashion200k(tmp_path))
    train = dataset.train_set()
    captions = [c for _, c in dataset.images["train"]]
    # "green maxi dressdotmark" has no sibling: never a source; every other image is
    assert sorted(captions[s] for s in dataset.sources) == sorted(TRAIN_CAPTIONS[:4] * 2)
    assert {train.triplet(i)[0] for i in range(len(train))} == set(dataset.sources)
    for index in range(0, len(train), 7):
        source, text, target = train.triplet(index)
        a, b = captions[source].split(), captions[target].split()
        assert a != b and len(a) == len(b)
        assert sum(x != y for x, y in zip(a, b)) == 1  # one word replaced: they share a parent
        assert text == different_words(captions[source], captions[target])[2]
    assert train.triplet(5) == fashion(tmp_path).train_set().triplet(5)  # a seed repeats the draws
    assert [train.triplet(i) for i in range(40)] != [dataset.train_set(seed=1).triplet(i) for i in range(40)]


def test_fashion200k_queries_and_caption_hits(tmp_path):
    protocol = fashion(make_fashion200k(tmp_path)).protocol()
    assert protocol.query_texts == ["replace black with white", "replace white with black"]
    assert protocol.query_exclude.tolist() == [0, 2]
    hits = [(protocol.gallery_labels["label"] == label).nonzero().flatten().tolist() for label in protocol.query_labels["label"]]
    assert hits == [[1, 2], [3]]  # "white lace dress" is on two images: both are hits


def test_fashion200k_workers_and_errors(tmp_path):
    dataset = fashion(make_fashion200k(tmp_path / "ok"))
    train = dataset.train_set()
    train.length = 2 * len(dataset.sources)  # two draws a source keep the test short
    assert_workers_give_valid_pairs(train)
    with pytest.raises(DatasetError, match="no train label files"):
        fashion(tmp_path)
    root = make_fashion200k(tmp_path / "missing")
    (root / "women/dresses/casual_and_day_dresses/test2/0.jpeg").unlink()
    with pytest.raises(DatasetError, match=r"image not found: .*test2/0\.jpeg"):
        fashion(root)
    root = make_fashion200k(tmp_path / "short")
    (root / "labels" / "dress_test_detect_all.txt").write_text("women/x.jpeg\t0.5\n")
    with pytest.raises(DatasetError, match=r"dress_test_detect_all.txt line 1 has 2 tab-separated fields"):
        fashion(root)
    root = make_fashion200k(tmp_path / "noqueries")
    (root / "test_queries.txt").unlink()
    with pytest.raises(DatasetError, match="test_queries.txt not found"):
        fashion(root).protocol()


# ---------------------------------------------------------------- MIT-States

FOLDERS = {
    "ripe apple": 2, "sliced apple": 2, "old apple": 1,  # a training noun
    "ripe tomato": 2, "sliced tomato": 1, "moldy tomato": 1,  # test nouns
    "old fig": 1, "ripe fig": 1,
    "adj apple": 1, "apple": 1,  # skipped: the placeholder and a folder without a space
}


def make_mitstates(root: Path) -> Path:
    for n, (folder, count) in enumerate(FOLDERS.items()):
        for k in range(count):
            _jpeg(root / "images" / folder / f"{k}.jpg", 10 * n + k)
    return root


def mitstates(root: Path, **options):
    return compose_retrieval.create("dataset", "mitstates", data_root=str(root), image_size=SIZE, **options)


def test_mitstates_split_and_skipped_folders(tmp_path):
    dataset = mitstates(make_mitstates(tmp_path))
    assert {(a, n) for _, a, n in dataset.images["train"]} == {("ripe", "apple"), ("sliced", "apple"), ("old", "apple")}
    assert len(dataset.images["train"]) == 5 and len(dataset.images["test"]) == 6
    assert sorted(set(dataset.train_texts())) == ["old apple", "ripe apple", "sliced apple"]


def test_mitstates_targets_share_the_noun_and_differ_in_adjective(tmp_path):
    dataset = mitstates(make_mitstates(tmp_path))
    train = dataset.train_set()
    images = dataset.images["train"]
    for index in range(len(train)):
        source, text, target = train.triplet(index)
        assert images[target][2] == images[source][2]
        assert images[target][1] == text != images[source][1]
    train.length = 2 * len(dataset.sources)  # two draws a source keep the test short
    assert_workers_give_valid_pairs(train)


def test_mitstates_queries_and_three_hit_rules(tmp_path):
    dataset = mitstates(make_mitstates(tmp_path))
    protocol = dataset.protocol()
    test = dataset.images["test"]
    queries = list(zip(protocol.query_sources.tolist(), protocol.query_texts))
    # one query per other adjective of the noun: tomato has 3 adjectives (4 images x 2), fig 2 (2 images x 1)
    assert len(queries) == 4 * 2 + 2 * 1
    for i, (source, text) in enumerate(queries):
        _, adjective, noun = test[source]
        assert text != adjective
        rules = {
            "label": lambda a, n: (a, n) == (text, noun),  # the target's caption
            "adjective": lambda a, n: a == text,  # any noun with the target adjective
            "noun": lambda a, n: n == noun,  # any adjective of the noun
        }
        for view, rule in rules.items():
            hits = (protocol.gallery_labels[view] == protocol.query_labels[view][i]).nonzero().flatten().tolist()
            assert hits == [j for j, (_, a, n) in enumerate(test) if rule(a, n)], (view, i)


def test_mitstates_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"images not found.*<adjective noun>"):
        mitstates(tmp_path)
    (tmp_path / "images" / "ripe apple").mkdir(parents=True)
    _jpeg(tmp_path / "images" / "ripe apple" / "0.jpg", 0)
    with pytest.raises(DatasetError, match="no test images"):
        mitstates(tmp_path)


def test_mitstates_no_queries_and_the_extra_recalls_when_evaluated(tmp_path):
    from compose_retrieval.evaluation import evaluate
    from conftest import tiny_model

    metrics = evaluate(tiny_model(), mitstates(make_mitstates(tmp_path / "ok")).protocol(), batch_size=4)
    for k in (1, 5, 10):
        assert {f"recall@{k}", f"adjective_recall@{k}", f"noun_recall@{k}"} <= set(metrics)
        assert metrics[f"noun_recall@{k}"] >= metrics[f"recall@{k}"]  # the noun rule is the looser one
    root = tmp_path / "one-adjective"
    for folder in ("ripe apple", "sliced apple", "ripe tomato"):  # the test noun tomato has one adjective
        _jpeg(root / "images" / folder / "0.jpg", 0)
    with pytest.raises(DatasetError, match="no test noun has two adjectives"):
        mitstates(root).protocol()
    root = tmp_path / "no-pairs"
    for folder in ("ripe apple", "ripe tomato", "sliced tomato"):  # apple, the one training noun, has one adjective
        _jpeg(root / "images" / folder / "0.jpg", 0)
    with pytest.raises(DatasetError, match="mitstates: no training pairs"):
        mitstates(root).train_set()


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    root = make_mitstates(tmp_path / "mit")
    (root / "images" / "moldy tomato" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="mitstates test: skipped 1 unreadable image"):
        dataset = mitstates(root, skip_unreadable=True)
    assert len(dataset.images["test"]) == 5 and "moldy" not in dataset.protocol().query_texts
    root = make_fashion200k(tmp_path / "fashion")
    (root / "women/dresses/casual_and_day_dresses/test1/0.jpeg").write_bytes(b"not a jpeg")  # a query's target
    with pytest.raises(DatasetError, match=r"cannot decode image .*test1/0\.jpeg"):
        fashion(root).protocol().gallery[1]
    with pytest.warns(UserWarning, match="fashion200k test: skipped 1 unreadable image"):
        dataset = fashion(root, skip_unreadable=True)
    assert dataset.protocol().query_texts == ["replace white with black"]  # the other query lost its target
    d = root / "women/dresses/casual_and_day_dresses"
    (root / "test_queries.txt").write_text(f"{d.relative_to(root)}/test0/0.jpeg {d.relative_to(root)}/test1/0.jpeg\n")
    with pytest.raises(DatasetError, match="test_queries.txt has no queries left"), pytest.warns(UserWarning):
        fashion(root, skip_unreadable=True).protocol()


def test_fashion200k_empty_caption_is_named(tmp_path):
    root = make_fashion200k(tmp_path)
    (root / "labels" / "dress_train_detect_all.txt").write_text("women/x.jpeg\t0.5\t \n")
    with pytest.raises(DatasetError, match=r"dress_train_detect_all.txt line 1 has an empty caption"):
        fashion(root)
