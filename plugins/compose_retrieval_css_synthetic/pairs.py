"""css-pairs: single CSS-style objects named by (colour, shape) pairs, some pairs held out: compositional
classification on data made here.

The design follows the compositional zero-shot splits of MIT-States (Purushwalkam et al.
2019's generalized split) and AO-CLEVr (Atzmon et al. 2020, 8 colours x 3 CLEVR shapes):
an image shows one object; its pair is (colour, shape), the attribute and the object.
8 colours x 6 shapes make 48 pairs. For shape s (after a seeded shuffle of the colours
and of the shapes) the colours 2s and 2s+1 (mod 8) are the test's unseen pairs (12) and
colour 2s+2 the validation's (6); the other 30 pairs are seen in training. Every colour
is then seen in training with at least two shapes, every shape with five colours, so
that each unseen pair is a new combination of a known colour and a known shape. The
test split also holds 12 of the seen pairs and the validation split 6 (new images of
training pairs), as the generalized split does, so seen and unseen accuracy are both
measured.

Images: a white canvas with one object in google/tirg's CSS colours, its centre drawn
uniformly in the middle 40% of the canvas and its half-size from 5 to 9 px (at 64 px),
so that neither position nor size names a pair.

Training (retrieval, as on MIT-States): an image of "c1 s" and the text "c2" -> an image
of "c2 s", both seen pairs. The test protocol "pairs" retrieves among the test images
(one query per other colour of the source's shape in the test split); ``--eval-every``
validates on the validation images alike. ``composition_task("pairs", phase)`` names the
val or test images among the pairs; the text of an attribute is the colour alone.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated

import numpy as np
import torch

from compose_retrieval import (
    IMAGENET_MEAN, IMAGENET_STD, CompositionTask, Dataset, DatasetError, Preprocessing, Range, RetrievalProtocol,
    TensorImages, Triplets,
)

from .render import RGB
from .scenes import COLORS

PAIR_SHAPES = ("rectangle", "circle", "triangle", "diamond", "cross", "ring")
PHASES = ("train", "val", "test")


def shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray, half: float) -> np.ndarray:
    """Where shape ``shape`` (an index into PAIR_SHAPES) of half-size ``half`` covers the pixel offsets (dy, dx)."""
    ady, adx = np.abs(dy), np.abs(dx)
    if shape == 0:
        return np.maximum(ady, adx) <= half
    if shape == 1:
        return dy * dy + dx * dx <= half * half
    if shape == 2:
        return (ady <= half) & (2 * adx <= dy + half)  # apex up
    if shape == 3:
        return ady + adx <= half
    if shape == 4:
        arm = half / 3
        return ((ady <= arm) & (adx <= half)) | ((adx <= arm) & (ady <= half))
    r2 = dy * dy + dx * dx
    return (r2 <= half * half) & (r2 >= (0.55 * half) ** 2)


def render_objects(objects: np.ndarray, size: int) -> np.ndarray:
    """(N, 5) rows (y, x, half-size in px at 64 px, colour, shape) -> (N, 3, size, size) uint8 images."""
    canvas = np.full((len(objects), size, size, 3), 255, dtype=np.uint8)
    centres = np.arange(size) + 0.5
    for n, (y, x, half, color, shape) in enumerate(objects):
        dy, dx = (centres - y * size)[:, None], (centres - x * size)[None, :]
        canvas[n][shape_mask(int(shape), dy, dx, half * size / 64)] = RGB[int(color)]
    return np.ascontiguousarray(canvas.transpose(0, 3, 1, 2))


def held_out_pairs(seed: int) -> dict[str, list[tuple[int, int]]]:
    """{"train": seen pairs, "val": unseen val pairs, "test": unseen test pairs} as (colour, shape) indices."""
    rng = np.random.default_rng((seed, 48))
    colors, shapes = rng.permutation(len(COLORS)), rng.permutation(len(PAIR_SHAPES))
    out: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
    for s in range(len(PAIR_SHAPES)):
        test = {(2 * s) % 8, (2 * s + 1) % 8}
        val = {(2 * s + 2) % 8}
        for c in range(len(COLORS)):
            phase = "test" if c in test else "val" if c in val else "train"
            out[phase].append((int(colors[c]), int(shapes[s])))
    return {phase: sorted(pairs) for phase, pairs in out.items()}


class CSSPairs(Dataset):
    """Single CSS-style objects named by (colour, shape), 12 of 48 pairs held out: compositional classification.

    One object per 64 px image, 8 colours x 6 shapes; per shape two colours are unseen test
    pairs and one an unseen validation pair, the rest train (pairs.py explains the split).
    Training: an image of "c1 shape" and the text "c2" -> an image of "c2 shape", seen
    pairs only. Protocol "pairs": that retrieval among the test images. Compositional
    classification: ``compose-retrieval classify RUN_DIR`` (split "pairs", phases val and
    test), as on MIT-States. Options: ``seed`` (the split and the images), images per
    pair in training (``train_per_pair``) and in val and test (``test_per_pair``),
    ``mods_per_image`` (training triplets per training image), ``image_size``.
    """

    default_loss = "batch_softmax"
    mods_per_source = 2
    protocol_names = ("pairs",)
    composition_split_names = ("pairs",)
    name = "css-pairs"

    def __init__(
        self,
        data_root: str | None = None,
        seed: int = 0,
        train_per_pair: Annotated[int, Range(1, 100_000)] = 60,
        test_per_pair: Annotated[int, Range(1, 100_000)] = 20,
        mods_per_image: Annotated[int, Range(1, 100)] = 4,
        image_size: Annotated[int, Range(16, 1024)] = 64,
    ):
        if data_root is not None:
            raise DatasetError("css-pairs is generated from its seed and reads no files; drop --data-root")
        self.seed, self.image_size = seed, image_size
        self.train_per_pair, self.test_per_pair, self.mods_per_image = train_per_pair, test_per_pair, mods_per_image
        self.preprocessing = Preprocessing(image_size, IMAGENET_MEAN, IMAGENET_STD, resize="none")

    @cached_property
    def pairs(self) -> dict[str, list[tuple[int, int]]]:
        """Per phase, its pairs as (colour, shape) indices: "train" the seen ones; "val" and "test" their unseen
        ones plus as many seen ones (drawn from the seed)."""
        held = held_out_pairs(self.seed)
        rng = np.random.default_rng((self.seed, 1))
        seen = held["train"]
        out = {"train": seen}
        for phase in ("val", "test"):
            picked = rng.choice(len(seen), size=len(held[phase]), replace=False)
            out[phase] = sorted(held[phase] + [seen[i] for i in picked])
        return out

    @cached_property
    def data(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per phase: (N, 3, S, S) uint8 images and the (N, 2) (colour, shape) of each."""
        rng = np.random.default_rng((self.seed, 2))
        out = {}
        for phase in PHASES:
            count = self.train_per_pair if phase == "train" else self.test_per_pair
            labels = np.array([pair for pair in self.pairs[phase] for _ in range(count)], dtype=np.int64)
            n = len(labels)
            objects = np.column_stack([rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n), rng.uniform(5, 9, n),
                                       labels[:, 0], labels[:, 1]])
            out[phase] = (render_objects(objects, self.image_size), labels)
        return out

    def images(self, phase: str) -> TensorImages:
        return TensorImages(torch.from_numpy(self.data[phase][0]), self.preprocessing)

    def labels(self, phase: str) -> list[tuple[str, str]]:
        return [(COLORS[c], PAIR_SHAPES[s]) for c, s in self.data[phase][1]]

    @cached_property
    def triplets(self) -> tuple[list[int], list[str], list[int]]:
        """Training (source, text, target): ``mods_per_image`` per training image, each another seen colour of its
        shape and an image of that pair, drawn from the seed."""
        rng = np.random.default_rng((self.seed, 3))
        labels = self.data["train"][1]
        by_pair: dict[tuple[int, int], list[int]] = {}
        for i, (c, s) in enumerate(labels):
            by_pair.setdefault((int(c), int(s)), []).append(i)
        colours_of = {s: sorted(c for c, s2 in by_pair if s2 == s) for _, s in by_pair}
        sources, texts, targets = [], [], []
        for i, (c, s) in enumerate(labels):
            others = [o for o in colours_of[int(s)] if o != c]
            if not others:
                continue
            for _ in range(self.mods_per_image):
                other = others[rng.integers(len(others))]
                pool = by_pair[(other, int(s))]
                sources.append(i)
                texts.append(COLORS[other])
                targets.append(pool[rng.integers(len(pool))])
        return sources, texts, targets

    def train_set(self, seed: int = 0, protocol: str | None = None) -> Triplets:
        sources, texts, targets = self.triplets
        return Triplets(self.images("train"), sources, texts, targets)

    def train_texts(self) -> list[str]:
        return list(self.triplets[1])

    def _protocol(self, name: str, phase: str) -> RetrievalProtocol:
        labels = self.labels(phase)
        colours_of: dict[str, set[str]] = {}
        for c, s in labels:
            colours_of.setdefault(s, set()).add(c)
        queries = [(i, c2, f"{c2} {s}") for i, (c, s) in enumerate(labels) for c2 in sorted(colours_of[s]) if c2 != c]
        return RetrievalProtocol.from_queries(name, self.images(phase), [f"{c} {s}" for c, s in labels], queries)

    def build_protocol(self, name: str) -> RetrievalProtocol:
        return self._protocol(name, "test")

    def validation(self, seed: int = 0, protocol: str | None = None) -> RetrievalProtocol:
        return self._protocol("validation", "val")

    def build_composition_task(self, split: str, phase: str) -> CompositionTask:
        if phase not in ("val", "test"):
            raise DatasetError(f"css-pairs classifies the val or test images, not {phase!r}")
        named = {p: [(COLORS[c], PAIR_SHAPES[s]) for c, s in pairs] for p, pairs in self.pairs.items()}
        return CompositionTask(
            name=f"css-pairs {split}/{phase}",
            images=self.images(phase), labels=self.labels(phase),
            train_pairs=named["train"], phase_pairs=named[phase],
            pairs=sorted({p for pairs in named.values() for p in pairs}),
            train_images=self.images("train"), train_labels=self.labels("train"),
            texts={c: c for c in COLORS}, attributes=list(COLORS), objects=list(PAIR_SHAPES),
            counts={p: len(self.data[p][1]) for p in PHASES}, protocols=("pairs",),
        )
