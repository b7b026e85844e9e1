"""fashion200k: Han et al., ICCV 2017, with the query texts and pairing of the TIRG paper (google/tirg)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from compose_retrieval import PASSES, DatasetError, FileDataset, ImageFiles, RetrievalProtocol, SampledPairs

LAYOUT = (
    "DATA_ROOT/labels/<category>_<split>_detect_all.txt (tab separated: image path, detection score, caption), "
    "DATA_ROOT/test_queries.txt (source path and target path a line) and the images at the listed paths, "
    "e.g. DATA_ROOT/women/dresses/..."
)


def clean_caption(caption: str) -> str:
    """google/tirg's caption clean-up: punctuation becomes words."""
    return caption.strip().replace(".", "dotmark").replace("?", "questionmark").replace("&", "andmark").replace("*", "starmark")


def different_words(source: str, target: str) -> tuple[str, str, str]:
    """(source word, target word, "replace <source word> with <target word>"), exactly as google/tirg.

    The first word of each caption that the other lacks; when there is none, the last word.
    """
    source_words, target_words = source.split(), target.split()
    source_word = next((w for w in source_words if w not in target_words), source_words[-1])
    target_word = next((w for w in target_words if w not in source_words), target_words[-1])
    return source_word, target_word, f"replace {source_word} with {target_word}"


def read_labels(root: Path, split: str) -> list[tuple[str, str]]:
    """(relative image path, cleaned caption) of every image of ``split``, label files in name order."""
    folder = root / "labels"
    files = sorted(p for p in folder.glob("*.txt") if split in p.name) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"fashion200k: no {split} label files in {folder}; expected {LAYOUT}")
    images = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 3:
                raise DatasetError(f"{path} line {number} has {len(fields)} tab-separated fields; expected image path, detection score, caption")
            if not fields[2].strip():
                raise DatasetError(f"{path} line {number} has an empty caption; every image needs one")
            images.append((fields[0].strip(), clean_caption(fields[2])))
    return images


def parent_index(captions: list[str]) -> dict[str, list[str]]:
    """Parent caption -> its child captions, as google/tirg: a parent is a caption with one word removed.

    Faithful to the reference, the word is removed with str.replace, so every occurrence
    of it as a substring goes (removing "red" from "red shredded" leaves "shded").
    """
    children: dict[str, list[str]] = defaultdict(list)
    for caption in dict.fromkeys(captions):
        for word in caption.split():
            parent = caption.replace(word, "").replace("  ", " ").strip()
            if caption not in children[parent]:
                children[parent].append(caption)
    return {p: c for p, c in children.items() if len(c) >= 2}


class Fashion200k(FileDataset):
    """Fashion200k (Han et al., ICCV 2017) as the TIRG paper uses it.

    Captions are cleaned as google/tirg does. Training: a source image whose caption has
    a sibling (another caption with the same parent, one word removed from each) is
    paired with a random image of a random sibling caption, and the text is "replace
    <word> with <word>" (the first differing word of each). Test: the 33,480 queries of
    test_queries.txt against every test image; a hit is a gallery image with the
    target's caption; the source is not ranked. The LSTM vocabulary is fitted on the
    training captions, as in the reference code (so "replace" and "with" are unknown
    words there too). Pairs are drawn from the run's seed. Options: ``image_size``
    (224), ``skip_unreadable``.
    """

    name = "fashion200k"
    layout = LAYOUT
    protocol_names = ("test",)
    default_loss = "batch_softmax"

    def read(self) -> None:
        self.images = {split: read_labels(self.root, split) for split in ("train", "test")}
        for split, images in self.images.items():
            missing = next((p for p, _ in images if not (self.root / p).is_file()), None)
            if missing is not None:
                raise DatasetError(f"fashion200k: image not found: {self.root / missing} (listed in a {split} label file)")
        for split, images in self.images.items():
            self.images[split] = self.keep_readable(images, lambda row: (self.root / row[0],), what=f"fashion200k {split}")
        self._index_training_captions()

    def _index_training_captions(self) -> None:
        captions = [c for _, c in self.images["train"]]
        self.caption_images: dict[str, list[int]] = defaultdict(list)
        for i, caption in enumerate(captions):
            self.caption_images[caption].append(i)
        self.children = parent_index(captions)
        self.parents: dict[str, list[str]] = defaultdict(list)
        for parent, children in self.children.items():
            for child in children:
                self.parents[child].append(parent)
        self.sources = [i for i, c in enumerate(captions) if c in self.parents]  # images with a sibling caption

    def draw(self, index: int, rng: np.random.Generator) -> tuple[int, str, int]:
        """Item ``index`` of the training pairs: (source, text, target), the source cycling through ``self.sources``."""
        source = self.sources[index % len(self.sources)]
        caption = self.images["train"][source][1]
        while True:
            parent = self.parents[caption][rng.integers(len(self.parents[caption]))]
            sibling = self.children[parent][rng.integers(len(self.children[parent]))]
            if sibling != caption:
                break
        target = self.caption_images[sibling][rng.integers(len(self.caption_images[sibling]))]
        return source, different_words(caption, sibling)[2], target

    def mods_of(self, source: int) -> dict[str, list[int]]:
        """Training image ``source``'s modifications: "replace X with Y" -> the images of each sibling caption."""
        caption = self.images["train"][source][1]
        mods: dict[str, list[int]] = {}
        for parent in self.parents[caption]:
            for sibling in self.children[parent]:
                if sibling != caption:
                    mods.setdefault(different_words(caption, sibling)[2], []).extend(self.caption_images[sibling])
        return mods

    def train_set(self, seed: int = 0, protocol: str | None = None) -> SampledPairs:
        train = self.images["train"]
        images = ImageFiles([self.root / p for p, _ in train], self.preprocessing)
        return SampledPairs(images, len(self.sources) * PASSES, self.draw, seed=seed, what="fashion200k", mods_of=self.mods_of)

    def train_texts(self) -> list[str]:
        return [c for _, c in self.images["train"]]

    def test_queries(self) -> list[tuple[int, str, int]]:
        """(source id, text, target id) of test_queries.txt, ids into the test images."""
        path = self.root / "test_queries.txt"
        if not path.is_file():
            raise DatasetError(f"fashion200k: {path} not found; expected {LAYOUT}")
        test = self.images["test"]
        ids = {p: i for i, (p, _) in enumerate(test)}
        queries = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise DatasetError(f"{path} line {number}: expected a source path and a target path")
            if any(self.root / f in self.unreadable for f in fields):
                continue  # an image skipped as unreadable: its queries go too
            absent = next((f for f in fields if f not in ids), None)
            if absent is not None:
                raise DatasetError(f"{path} line {number}: {absent} is not in the test label files")
            source, target = ids[fields[0]], ids[fields[1]]
            queries.append((source, different_words(test[source][1], test[target][1])[2], target))
        if not queries:
            raise DatasetError(f"fashion200k: {path} has no queries left")
        return queries

    def build_protocol(self, name: str) -> RetrievalProtocol:
        test = self.images["test"]
        gallery = ImageFiles([self.root / p for p, _ in test], self.preprocessing)
        return RetrievalProtocol.from_queries(name, gallery, [c for _, c in test], self.test_queries(), targets="index")
