"""css: the CSS dataset of the TIRG paper, read from the original files (cssfiles.py)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch

from compose_retrieval import (
    IMAGENET_MEAN, IMAGENET_STD, PASSES, DatasetError, FileDataset, ImageFiles, Preprocessing, Range, RetrievalProtocol,
    SampledPairs, TensorImages, read_image,
)

from .cssfiles import DATA_FILE, LAYOUT, check_split, image_path, read_data_file
from .render import render_objects_2d
from .scenes import COLORS, SHAPES, SIZES

PROTOCOLS = ("3d", "2d-to-3d")


def _index(names: tuple[str, ...], value: Any, what: str) -> int:
    if value not in names:
        raise DatasetError(f"css: unknown {what} {value!r} in {DATA_FILE}; known: {', '.join(names)}")
    return names.index(value)


def drawable(objects: list[dict[str, Any]]) -> list[tuple[float, float, int, int, int]]:
    """CSS objects -> (y, x, colour, shape, size) for render_objects_2d."""
    return [
        (float(o["pos"][0]), float(o["pos"][1]), _index(COLORS, o["color"], "colour"),
         _index(SHAPES, o["shape"], "shape"), _index(SIZES, o["size"], "size"))
        for o in objects
    ]


class _Split:
    """One split's images (paths, objects, labels) and its modifications, after skipping unreadable images.

    ``mods`` keeps the file's grouping: (text, [(from, to), ...]) per modification;
    ``pairs`` lists every (from, text, to) of them.
    """

    def __init__(self, dataset: FileDataset, name: str, record: dict[str, Any]):
        self.objects = list(record["objects_img"])
        n = len(self.objects)
        self.paths = [image_path(dataset.root, name, i) for i in range(n)]
        labels = record.get("labels")  # image id -> scene label, as a list or a dict
        if labels is None:
            self.labels = list(range(n))  # no labels: every image its own
        else:
            try:
                self.labels = [labels[i] for i in range(n)]
            except (KeyError, IndexError):
                raise DatasetError(f"css: split {name!r} has labels for {len(labels)} of its {n} images") from None
        mods = [(str(m["to_str"]), [(int(f), int(t)) for f, t in zip(m["from"], m["to"])]) for m in record["mods"]]
        self.mods = [(text, pairs) for text, pairs in mods if pairs]  # a modification with no pair is never drawn
        if n == 0 or not self.mods:
            raise DatasetError(f"css: split {name!r} has {n} images and {len(self.mods)} modifications with pairs; it needs both")
        for f, _, t in self.pairs:
            if not (0 <= f < n and 0 <= t < n):
                raise DatasetError(f"css: split {name!r} has a modification between images {f} and {t}, but only {n} images")
        missing = next((p for p in self.paths if not p.is_file()), None)
        if missing is not None:
            raise DatasetError(f"css: image not found: {missing}; expected {LAYOUT}")
        bad = dataset.find_unreadable(self.paths)
        if bad:
            unreadable = set(bad)
            keep = [i for i, p in enumerate(self.paths) if p not in unreadable]
            new = {old: i for i, old in enumerate(keep)}
            before = len(self.pairs)
            mods = [(text, [(new[f], new[t]) for f, t in pairs if f in new and t in new]) for text, pairs in self.mods]
            self.mods = [(text, pairs) for text, pairs in mods if pairs]
            dataset.warn_skipped(f"css {name}", bad, before - len(self.pairs))
            self.objects = [self.objects[i] for i in keep]
            self.paths = [self.paths[i] for i in keep]
            self.labels = [self.labels[i] for i in keep]
            if not self.mods:
                raise DatasetError(f"css: split {name!r} has no pairs left after skipping {len(bad)} unreadable image(s)")

    @property
    def pairs(self) -> list[tuple[int, str, int]]:
        return [(f, text, t) for text, pairs in self.mods for f, t in pairs]

    def mods_of(self, source: int) -> dict[str, list[int]]:
        """The modifications of image ``source``: text -> the images it leads to."""
        if not hasattr(self, "_mods_of"):
            self._mods_of: dict[int, dict[str, list[int]]] = {}
            for f, text, t in self.pairs:
                self._mods_of.setdefault(f, {}).setdefault(text, []).append(t)
        return self._mods_of.get(source, {})

    def draw(self, index: int, rng: np.random.Generator) -> tuple[int, str, int]:
        """A training pair as google/tirg draws one: a random modification, then one of its (from, to) pairs."""
        text, pairs = self.mods[rng.integers(len(self.mods))]
        source, target = pairs[rng.integers(len(pairs))]
        return source, text, target


class CSS(FileDataset):
    """CSS (Vo et al., CVPR 2019; scenes built with CLEVR tools) from its original files.

    The layout under ``--data-root``: the pickled dict css_toy_dataset_novel2_small.dup.npy
    and images/css_<split>_<idx:06d>.png. The dict is a Python pickle (the published
    format); it is read by a restricted unpickler that accepts only plain containers,
    strings, numbers and numpy arrays, so a hostile file runs nothing (cssfiles.py;
    `compose-retrieval data make-css` writes one from css-synthetic). Protocols (the paper's section 4.1): "3d" (queries and
    gallery are the PNG renders) and "2d-to-3d" (the query image is the flat 2D drawing
    of the scene, drawn from its objects; the gallery is rendered). A query's own
    source is not ranked; a hit is any gallery image with the target's scene label, so
    duplicates of a scene count. A run tested on 2d-to-3d trains from the drawings of
    the sources to the renders of the targets (trained on renders alone, a model meets
    drawings first at test time and ranks at chance). Images are fed as google/tirg feeds them, ToTensor and
    normalisation only (all must be square and the same size), unless ``image_size``
    asks for a resize and centre crop. Training draws pairs as google/tirg does, a
    random modification, then a random one of its (from, to) pairs, every draw fresh
    (an epoch holds 64 draws per image), from the run's seed and with no state on the
    dataset, so any number of DataLoader workers gives valid pairs. google/tirg also makes every
    second draw reuse the previous draw's source with another modification, per call, so
    each of its batches holds 16 sources with two texts each: training does the same here
    by default (``mods_per_source`` = 2, ``--mods-per-source``; see
    compose_retrieval.data.SameSourceBatches). Options: ``image_size`` (None: the images'
    own size), ``skip_unreadable``.
    """

    name = "css"
    layout = LAYOUT
    protocol_names = PROTOCOLS
    default_loss = "soft_triplet"
    mods_per_source = 2  # google/tirg's batches: two texts of each source

    def __init__(self, data_root: str | None = None, image_size: Annotated[int, Range(8, 4096)] | None = None,
                 skip_unreadable: bool = False):
        super().__init__(data_root, image_size, skip_unreadable)  # image_size None: no preprocessing set yet
        data = read_data_file(self.root)
        self.splits = {s: _Split(self, s, check_split(data, s, self.root)) for s in ("train", "test")}
        if image_size is None:
            first = self.splits["train"].paths[0]
            height, width = read_image(first).shape[-2:]
            if height != width:
                raise DatasetError(f"css: {first} is {width}x{height}, not square; give --dataset-opt image_size=N to resize and centre-crop")
            self.preprocessing = Preprocessing(height, IMAGENET_MEAN, IMAGENET_STD, resize="none")

    def train_set(self, seed: int = 0, protocol: str | None = None) -> SampledPairs:
        s = self.splits["train"]
        # PASSES x as many draws as google/tirg's epoch (one per image): item j is fixed by (seed, j),
        # so a shorter dataset would repeat its draws every pass
        return SampledPairs(ImageFiles(s.paths, self.preprocessing), len(s.paths) * PASSES, s.draw, seed=seed, what="css",
                            source_images=self.drawings(s) if protocol == "2d-to-3d" else None, mods_of=s.mods_of)

    def drawings(self, split: _Split) -> TensorImages:
        """The flat 2D drawings of a split's scenes, drawn from the objects in the file."""
        drawn = render_objects_2d([drawable(objects) for objects in split.objects], self.preprocessing.image_size)
        return TensorImages(torch.from_numpy(drawn), self.preprocessing)

    def train_texts(self) -> list[str]:
        return [text for _, text, _ in self.splits["train"].pairs]

    def build_protocol(self, name: str) -> RetrievalProtocol:
        s = self.splits["test"]
        gallery = ImageFiles(s.paths, self.preprocessing)
        queries = gallery if name == "3d" else self.drawings(s)
        return RetrievalProtocol.from_queries(name, gallery, s.labels, s.pairs, targets="index", query_images=queries)
