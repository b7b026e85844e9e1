"""MIT-States' compositional splits from their published files, in both published layouts: the generalized split
(czsl's tree: compositional-split-natural/, metadata_compositional-split-natural.t7, images/<adj_noun>/) and the
split of Misra et al. (Attributes as Operators' files: compositional-split/, metadata.t7; here with the release's own
folder names, "adj noun"). Tiny trees in tmp_path: pair files, .t7 metadata written with torch.save of plain lists
and dicts, tiny JPEGs; a few training steps and classification through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import compose_retrieval
from compose_retrieval import DatasetError

from conftest import TINY_CLI_MODEL, assert_one_line_error, invoke
from test_public_datasets import SIZE, _jpeg

TRAIN = ["ripe apple", "sliced apple", "old apple", "ripe tomato", "moldy tomato", "old fig", "ripe fig"]
NATURAL = {
    "train": TRAIN,
    "val": ["sliced tomato", "ripe tomato", "ripe apple"],  # one unseen pair, two seen
    "test": ["old tomato", "sliced fig", "ripe tomato", "old apple"],  # two unseen, two seen
}
MISRA = {"train": TRAIN, "test": ["sliced tomato", "old tomato", "sliced fig"]}


def _write_pairs(folder: Path, pairs: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True)
    for phase, names in pairs.items():
        (folder / f"{phase}_pairs.txt").write_text("\n".join(names) + "\n")


def make_natural(root: Path, per_pair: int = 2) -> Path:
    """czsl's tree: folders "adj_noun", a metadata list of dicts {image, attr, obj, set}."""
    _write_pairs(root / "compositional-split-natural", NATURAL)
    metadata, n = [], 0
    for phase, names in NATURAL.items():
        for name in names:
            folder = name.replace(" ", "_")
            for k in range(per_pair):
                file = f"{phase}{k}.jpg"
                _jpeg(root / "images" / folder / file, n)
                n += 1
                attr, obj = name.split()
                metadata.append({"image": f"{folder}/{file}", "attr": attr, "obj": obj, "set": phase})
    metadata += [
        {"image": "adj_apple/x.jpg", "attr": "NA", "obj": "apple", "set": "train"},  # unlabelled: skipped
        {"image": "ripe_apple/y.jpg", "attr": "ripe", "obj": "apple", "set": "NA"},  # in no set: skipped
        {"image": "wet_apple/z.jpg", "attr": "wet", "obj": "apple", "set": "train"},  # a pair of no file: skipped
    ]
    torch.save(metadata, root / "metadata_compositional-split-natural.t7")
    return root


def make_misra(root: Path, per_pair: int = 2) -> Path:
    """Attributes as Operators' files over the release's own folders ("adj noun"); metadata without a set, written
    in PyTorch's legacy (pre-zip) format as in 2018."""
    _write_pairs(root / "compositional-split", MISRA)
    metadata, n = [], 0
    for name in MISRA["train"] + MISRA["test"]:
        for k in range(per_pair):
            _jpeg(root / "images" / name / f"{k}.jpg", 100 + n)
            n += 1
            attr, obj = name.split()
            metadata.append({"image": f"{name.replace(' ', '_')}/{k}.jpg", "attr": attr, "obj": obj})
    metadata.append({"image": "adj_fig/0.jpg", "attr": "NA", "obj": "fig"})
    torch.save(metadata, root / "metadata.t7", _use_new_zipfile_serialization=False)
    return root


def mitstates(root: Path, **options):
    return compose_retrieval.create("dataset", "mitstates", data_root=str(root), image_size=SIZE, **options)


def test_the_natural_split_is_read_as_czsl_reads_it(tmp_path):
    dataset = mitstates(make_natural(tmp_path))
    assert dataset.protocols() == ["natural"]  # no "adj noun" folder: the retrieval split is absent
    assert dataset.split_counts("natural") == {"train": 14, "val": 6, "test": 8, "missing": 0}
    task = dataset.composition_task("natural", "test")
    assert task.name == "mitstates natural/test" and task.protocols == ("natural",)
    assert sorted(set(task.labels)) == sorted(tuple(p.split()) for p in NATURAL["test"])
    assert task.texts["sliced"] == "sliced"  # the adjective alone
    # closed world: training pairs plus the test pairs (the val-only pair "sliced tomato" is left out)
    assert set(task.candidates()) == {tuple(p.split()) for p in TRAIN + NATURAL["test"]}
    assert len(task.candidates(open_world=True)) == 4 * 3  # 4 attributes (ripe sliced old moldy) x 3 objects
    assert task.counts == {"train": 14, "val": 6, "test": 8, "missing": 0}
    val = dataset.composition_task("natural", "val")
    assert {tuple(p.split()) for p in NATURAL["val"]} == set(val.labels)
    assert ("old", "tomato") not in set(val.candidates())


def test_the_misra_split_matches_folders_with_spaces_and_has_no_set(tmp_path):
    dataset = mitstates(make_misra(tmp_path))
    # the release's folders have spaces, so the retrieval split of the TIRG paper is there too
    assert dataset.protocols() == ["test", "misra"]
    assert dataset.split_counts("misra") == {"train": 14, "test": 6, "missing": 0}
    task = dataset.composition_task("misra", "test")
    assert all(p in {("sliced", "tomato"), ("old", "tomato"), ("sliced", "fig")} for p in task.labels)
    with pytest.raises(DatasetError, match="no 'val' phase"):
        dataset.composition_task("misra", "val")
    with pytest.raises(DatasetError, match="not found; it is part of the generalized split.*compositional_split_natural"):
        dataset.composition_task("natural", "test")
    with pytest.raises(DatasetError, match="no classification split 'tirg'; its splits: natural, misra"):
        dataset.composition_task("tirg")
    texts = dataset.train_texts()  # the split's training pairs join the vocabulary, its held-out pairs do not
    assert "ripe tomato" in texts and "sliced tomato" not in texts


def test_missing_files_name_the_file_and_where_it_comes_from(tmp_path):
    root = make_natural(tmp_path / "a")
    (root / "metadata_compositional-split-natural.t7").unlink()
    with pytest.raises(DatasetError, match=r"metadata_compositional-split-natural\.t7 not found.*senthilpurushwalkam"):
        mitstates(root).composition_task()
    root = make_natural(tmp_path / "b")
    (root / "compositional-split-natural" / "val_pairs.txt").unlink()
    with pytest.raises(DatasetError, match=r"val_pairs\.txt not found"):
        mitstates(root).protocol("natural")
    root = make_misra(tmp_path / "c")
    (root / "metadata.t7").unlink()
    with pytest.raises(DatasetError, match=r"metadata\.t7 not found.*attr-ops-data"):
        mitstates(root).protocol("misra")
    root = make_natural(tmp_path / "d")
    (root / "images" / "old_tomato" / "test0.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) listed .* not under .*old_tomato/test0\.jpg.*release_dataset\.zip"):
        mitstates(root).composition_task()
    with pytest.warns(UserWarning, match="skipped 1 image"):
        dataset = mitstates(root, skip_unreadable=True)
        assert dataset.split_counts("natural")["test"] == 7
    assert dataset.skipped_images == 1


class NotPlain:
    def __init__(self):
        self.image = "ripe_apple/0.jpg"


@pytest.mark.parametrize("content, message", [
    ([NotPlain()], "not a plain PyTorch pickle"),  # a class: torch.load(weights_only=True) refuses it
    ([{"image": "ripe_apple/0.jpg", "attr": "ripe", "obj": torch.zeros(1)}], "holds a Tensor"),
    ({"image": "ripe_apple/0.jpg"}, "holds a dict, not the list"),
    ([{"image": "ripe_apple/0.jpg", "attr": "ripe"}], "lacks obj"),
])
def test_a_metadata_file_of_anything_but_plain_containers_is_refused_in_one_line(tmp_path, content, message):
    root = make_natural(tmp_path)
    torch.save(content, root / "metadata_compositional-split-natural.t7")
    with pytest.raises(DatasetError, match=message) as info:
        mitstates(root).composition_task()
    assert "\n" not in str(info.value)
    if isinstance(content, list) and isinstance(content[0], NotPlain):
        result = invoke("train", "--dataset", "mitstates", "--data-root", root, "--protocol", "natural",
                        "--dataset-opt", f"image_size={SIZE}", *TINY_CLI_MODEL, "--run-dir", tmp_path / "run")
        assert_one_line_error(result, "not a plain pytorch pickle")


def _train(root: Path, run: Path, protocol: str, *extra) -> None:
    result = invoke("train", "--dataset", "mitstates", "--data-root", root, "--protocol", protocol,
                    "--dataset-opt", f"image_size={SIZE}", *TINY_CLI_MODEL, "--run-dir", run, *extra)
    assert result.exit_code == 0, result.output


def test_natural_trains_on_its_training_pairs_validates_on_val_and_classifies_through_the_cli(tmp_path):
    root = make_natural(tmp_path / "mit")
    dataset = mitstates(root)
    train = dataset.train_set(seed=0, protocol="natural")
    rows = dataset._training_rows("natural")[0]
    for index in range(len(train)):
        source, text, target = train.triplet(index)
        assert f"{rows[source][1]} {rows[source][2]}" in TRAIN and f"{text} {rows[target][2]}" in TRAIN
    assert dataset.validation(protocol="natural").name == "natural-val" and dataset.validation() is None
    run = tmp_path / "run"
    _train(root, run, "natural", "--eval-every", "3")
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["eval"]["protocol"] == "natural"
    result = invoke("classify", run, "--data-root", root, "--topk", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "mitstates natural/test, closed world" in result.output and "model top-2" in result.output
    written = json.loads((run / "classification-natural-test-closed.json").read_text())
    assert written["counts"] == {"train": 14, "val": 6, "test": 8, "missing": 0}
    assert written["images"] == 8 and written["unseen_images"] == 4 and written["pairs"] == 9
    result = invoke("classify", run, "--data-root", root, "--open-world", "--phase", "val", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["pairs"] == 12 and metrics["world"] == "open" and metrics["phase"] == "val"
    assert_one_line_error(invoke("classify", run, "--data-root", root, "--split", "misra"), "compositional-split", "not found")


def test_misra_trains_refuses_eval_every_and_a_model_of_the_retrieval_split_is_refused(tmp_path):
    root = make_misra(tmp_path / "mit")
    run = tmp_path / "misra"
    _train(root, run, "misra")
    result = invoke("classify", run, "--data-root", root, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["task"] == "mitstates misra/test" and metrics["seen_images"] == 0 and metrics["auc"] is None
    assert metrics["closed_acc"] is not None  # Attributes as Operators' closed world: the 3 test pairs only
    result = invoke("train", "--dataset", "mitstates", "--data-root", root, "--protocol", "misra", "--eval-every", "2",
                    "--dataset-opt", f"image_size={SIZE}", *TINY_CLI_MODEL, "--run-dir", tmp_path / "bad")
    assert_one_line_error(result, "misra", "no validation set")
    run = tmp_path / "retrieval"
    _train(root, run, "test")  # the TIRG paper's split: it trained on pairs the Misra split holds out
    result = invoke("classify", run, "--data-root", root, "--split", "misra")
    assert_one_line_error(result, "protocol 'test'", "--protocol misra")
