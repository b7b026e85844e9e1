"""The triplets dataset: the user's own images in a CSV / JSON-lines layout, its hit rule, workers, errors."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

import compose_retrieval
from compose_retrieval import DatasetError
from compose_retrieval.evaluation import evaluate

from conftest import TINY_CLI_MODEL, assert_workers_give_valid_pairs, invoke

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 190, 40)}
SHAPES = ("square", "disc")


def _image(path: Path, colour: str, shape: str, size: int = 40, shift: int = 0) -> None:
    image = Image.new("RGB", (size, size + 8), "white")  # not square: the loader resizes and crops
    draw = ImageDraw.Draw(image)
    box = (8 + shift, 12, size - 8 + shift, size - 4)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_folder(root: Path, gallery: str = "folder") -> Path:
    """Products: every (colour, shape) photographed twice; texts ask for another colour."""
    for colour in COLOURS:
        for shape in SHAPES:
            _image(root / "train" / f"{colour}-{shape}.jpg", colour, shape)
            for shot in (1, 2):
                _image(root / "gallery" / f"{colour}-{shape}-{shot}.png", colour, shape, shift=2 * shot)
    pairs = [(a, b, s) for a in COLOURS for b in COLOURS if a != b for s in SHAPES]
    _write_csv(root / "train.csv", ["source", "text", "target"],
               [[f"train/{a}-{s}.jpg", f"make it {b}", f"train/{b}-{s}.jpg"] for a, b, s in pairs])
    with (root / "queries.jsonl").open("w") as f:
        for a, b, s in pairs:
            f.write(json.dumps({"source": f"gallery/{a}-{s}-1.png", "text": f"make it {b}", "target": f"gallery/{b}-{s}-1.png"}) + "\n")
    if gallery == "csv":  # both shots of a product share its label
        (root / "gallery").rename(root / "photos")
        _write_csv(root / "gallery.csv", ["image", "label"],
                   [[f"photos/{c}-{s}-{n}.png", f"{c}-{s}"] for c in COLOURS for s in SHAPES for n in (1, 2)])
        for name in ("queries.jsonl",):
            (root / name).write_text((root / name).read_text().replace("gallery/", "photos/"))
    return root


def create(root: Path, **options):
    return compose_retrieval.create("dataset", "triplets", data_root=str(root), image_size=32, **options)


def test_counts_images_and_protocol(tmp_path):
    dataset = create(make_folder(tmp_path))
    train = dataset.train_set()
    assert len(train) == 12 and len(train.images) == 6
    item = train[0]
    assert item["source"].shape == item["target"].shape == (3, 32, 32) and item["text"] == "make it blue"
    assert set(dataset.train_texts()) == {"make it red", "make it blue", "make it green"}

    protocol = dataset.protocol()
    assert len(protocol.gallery) == 12 and len(protocol.query_texts) == 12
    names = [p.name for p in dataset.gallery_paths]
    # the query's own source is excluded; without labels only the listed target is a hit
    first = dataset.query_rows[0]
    assert names[protocol.query_exclude[0]] == first["source"].name == "red-square-1.png"
    hits = (protocol.gallery_labels["label"] == protocol.query_labels["label"][0]).nonzero().flatten().tolist()
    assert [names[i] for i in hits] == ["blue-square-1.png"]


class Oracle(nn.Module):
    """Composes a query as the embedding of a chosen gallery image (the other shot of the target)."""

    def __init__(self, protocol, answers):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.answers = answers

    def embed_images(self, images):
        return images.flatten(1) + self.dummy

    def compose(self, images, texts):
        return torch.stack([self.answers[t] for t in texts]).flatten(1)


def _other_shot_oracle(dataset, protocol):
    """A model that answers every query with the target's *other* photo."""
    names = [p.name for p in dataset.gallery_paths]
    answers = {}
    for row in dataset.query_rows:
        other = row["target"].name.replace("-1.png", "-2.png")
        answers[row["text"] + row["source"].name] = protocol.gallery[names.index(other)]
    protocol.query_texts = [r["text"] + r["source"].name for r in dataset.query_rows]  # unique keys for the oracle
    return Oracle(protocol, answers)


def test_a_label_column_makes_every_image_of_the_label_a_hit(tmp_path):
    with_labels = create(make_folder(tmp_path / "a", gallery="csv"))
    protocol = with_labels.protocol()
    assert evaluate(_other_shot_oracle(with_labels, protocol), protocol)["recall@1"] == 1.0

    without = create(make_folder(tmp_path / "b"))
    protocol = without.protocol()
    metrics = evaluate(_other_shot_oracle(without, protocol), protocol)
    assert metrics["recall@1"] == 0.0 and metrics["recall@5"] == 1.0  # the listed target is a near second


def test_two_workers_give_valid_pairs_and_a_seed_repeats_the_epoch(tmp_path):
    assert_workers_give_valid_pairs(create(make_folder(tmp_path)).train_set())


def test_cli_trains_and_evaluates_on_a_user_folder(tmp_path):
    root = make_folder(tmp_path / "data")
    result = invoke("train", *TINY_CLI_MODEL, "--dataset", "triplets", "--data-root", root, "--dataset-opt", "image_size=32",
                    "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "recall@1" in result.output and "queries: 12" in result.output and "gallery: 12" in result.output
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_a_corrupt_image_met_in_a_worker_is_one_line(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "train" / "green-disc.jpg").write_bytes(b"not an image")
    result = invoke("train", *TINY_CLI_MODEL, "--workers", "2", "--dataset", "triplets", "--data-root", root,
                    "--dataset-opt", "image_size=32", "--run-dir", tmp_path / "run")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot decode image" in lines[0] and "green-disc.jpg" in lines[0], result.stderr


def _error(root: Path, *fragments: str, **options) -> str:
    with pytest.raises(DatasetError) as info:
        create(root, **options)
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    return message


def test_layout_errors_name_the_path_and_the_layout(tmp_path):
    _error(tmp_path / "nowhere", "data root", "nowhere", "does not exist", "train.csv")
    root = make_folder(tmp_path / "data")
    (root / "queries.jsonl").unlink()
    _error(root, "no queries.csv or queries.jsonl", "gallery.csv")
    root = make_folder(tmp_path / "d2")
    (root / "train" / "red-square.jpg").unlink()
    _error(root, "train.csv row 1", "image not found", "red-square.jpg")
    root = make_folder(tmp_path / "d3")
    (root / "train.csv").write_text("source,text,target\ntrain/red-square.jpg,,train/blue-square.jpg\n")
    _error(root, "train.csv line 2 has no 'text'")
    (root / "train.csv").write_text("source,text,target\n")
    _error(root, "train.csv has no rows")
    root = make_folder(tmp_path / "bom")  # a spreadsheet's byte-order mark is not part of the first column's name
    (root / "train.csv").write_text("\ufeff" + (root / "train.csv").read_text(), encoding="utf-8")
    assert create(root).train_set().triplet(0)[1] == "make it blue"
    (root / "queries.jsonl").write_text('["gallery/red-square-1.png", "make it blue", "gallery/blue-square-1.png"]\n')
    _error(root, "queries.jsonl line 1 is not a JSON object")
    root = make_folder(tmp_path / "d4")
    (root / "gallery" / "blue-square-1.png").unlink()
    _error(root, "image not found", "blue-square-1.png")  # named by the query that lists it
    with pytest.raises(DatasetError, match="give --data-root"):
        compose_retrieval.create("dataset", "triplets")


def test_a_target_outside_the_gallery_is_named(tmp_path):
    root = make_folder(tmp_path)
    _image(root / "elsewhere" / "x.png", "red", "disc")
    with (root / "queries.jsonl").open("a") as f:
        f.write(json.dumps({"source": "gallery/red-disc-1.png", "text": "like x", "target": "elsewhere/x.png"}) + "\n")
    _error(root, "query 13's target", "x.png", "is not in the gallery")


def test_a_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path)
    (root / "train" / "green-disc.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    train = create(root).train_set()
    broken = next(i for i in range(len(train)) if train.sources[i] == train.images.paths.index((root / "train" / "green-disc.jpg").resolve()))
    with pytest.raises(DatasetError, match=r"cannot decode image .*green-disc\.jpg.*skip_unreadable=true"):
        train[broken]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = create(root, skip_unreadable=True)
    [warning] = [w for w in caught if "unreadable" in str(w.message)]
    assert "skipped 1 unreadable image(s) and the 4 row(s)" in str(warning.message)
    assert len(dataset.train_rows) == 8  # the 4 training pairs from or to the green disc are gone
    assert all(dataset.train_set()[i]["source"].shape == (3, 32, 32) for i in range(8))


def test_a_row_with_an_unquoted_comma_is_an_error_not_a_cut_text(tmp_path):
    root = make_folder(tmp_path)
    with (root / "train.csv").open("a") as f:
        f.write("train/red-square.jpg,make it red, then blue,train/blue-square.jpg\n")
    _error(root, "train.csv line 14 has 4 fields but the header has 3", "double quotes", '"make it red, then blue"')
    _write_csv(root / "train.csv", ["source", "text", "target"],  # csv.writer quotes it, and the text arrives whole
               [["train/red-square.jpg", "make it red, then blue", "train/blue-square.jpg"]])
    assert create(root).train_texts() == ["make it red, then blue"]
    (root / "train.csv").write_text('source,text,target\ntrain/red-square.jpg,"make it\nblue",train/blue-square.jpg\n'
                                    "train/red-square.jpg,make it red, then blue,train/blue-square.jpg\n")
    _error(root, "train.csv line 4 has 4 fields")  # the line in the file, past a quoted line break


def test_unknown_columns_and_keys_are_named_with_the_ones_the_file_takes(tmp_path):
    root = make_folder(tmp_path / "a")
    _write_csv(root / "train.csv", ["source", "text", "target", "note"], [["train/red-square.jpg", "make it blue", "train/blue-square.jpg", "x"]])
    _error(root, "train.csv has unknown column(s) 'note'", "takes the columns source,text,target")
    _write_csv(root / "train.csv", ["source", "caption", "target"], [["train/red-square.jpg", "make it blue", "train/blue-square.jpg"]])
    _error(root, "unknown column(s) 'caption'", "source,text,target")
    root = make_folder(tmp_path / "b")
    with (root / "queries.jsonl").open("a") as f:
        f.write(json.dumps({"source": "gallery/red-disc-1.png", "text": "make it blue", "target": "gallery/blue-disc-1.png", "lable": "x"}) + "\n")
    _error(root, "queries.jsonl line 13 has unknown key(s) 'lable'", "takes the keys source,text,target")
    root = make_folder(tmp_path / "c", gallery="csv")
    (root / "gallery.csv").write_text((root / "gallery.csv").read_text().replace("image,label", "image,lable"))
    _error(root, "gallery.csv has unknown column(s) 'lable'", "takes the columns image[,label]")


def test_paths_outside_the_data_root_are_refused_unless_allowed(tmp_path):
    outside = tmp_path / "elsewhere" / "x.png"
    _image(outside, "red", "disc")
    for i, written in enumerate(("../elsewhere/x.png", "train/../../elsewhere/x.png", str(outside))):
        root = make_folder(tmp_path / f"data{i}")
        with (root / "train.csv").open("a") as f:
            f.write(f"{written},make it blue,train/blue-disc.jpg\n")
        _error(root, "train.csv row 13", f"the image path {written} is outside the data root", "allow_outside_root=true")
        assert create(root, allow_outside_root=True).train_rows[12]["source"] == outside.resolve()
    root = make_folder(tmp_path / "gallery", gallery="csv")
    manifest = (root / "gallery.csv").read_text()
    (root / "gallery.csv").write_text(manifest + "../elsewhere/x.png,x\n")
    _error(root, "gallery.csv row 13", "../elsewhere/x.png", "outside the data root")
    (root / "gallery.csv").write_text(manifest.replace("photos/red-disc-1.png", "photos/../photos/red-disc-1.png"))
    assert (root / "photos" / "red-disc-1.png").resolve() in create(root).gallery_paths  # a ".." that stays inside is fine
    with pytest.raises(compose_retrieval.errors.OptionError, match="allow_outside_root"):
        create(root, allow_outside_root="yes")
