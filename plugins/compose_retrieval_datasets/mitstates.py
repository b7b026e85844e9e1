"""mitstates: Isola et al., CVPR 2015, as the TIRG paper retrieves in it (google/tirg), and its compositional splits.

Protocols: "test", the retrieval split of the TIRG paper (49 held-out nouns); "natural", the
generalized split of Purushwalkam et al. 2019 (Task-driven modular networks), as the czsl
repository of Mancini et al. 2021 reads it; "misra", the closed-world split of Misra et al.
2017 (Red wine to red tomato), as Attributes as Operators (Nagarajan and Grauman 2018)
reads it. The last two hold out attribute-object *pairs*, not nouns, and classify
images into pairs (``composition_task``).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compose_retrieval import (
    IMAGE_SUFFIXES, PASSES, CompositionTask, DatasetError, FileDataset, ImageFiles, RetrievalProtocol, SampledPairs,
)

LAYOUT = "DATA_ROOT/images/<adjective noun>/<file>.jpg (folders without a space, and the 'adj <noun>' placeholders, are skipped)"

TEST_NOUNS = frozenset(
    "armor bracelet bush camera candy castle ceramic cheese clock clothes coffee fan fig fish foam forest fruit "
    "furniture garden gate glass horse island laptop lead lightning mirror orange paint persimmon plastic plate "
    "potato road rubber sand shell sky smoke steel stream table tea tomato vacuum wax wheel window wool".split()
)

IMAGES_SOURCE = ("the images/ folder of release_dataset.zip from wednesday.csail.mit.edu/joseph_result/"
                 "state_and_transformation/ (folder names with spaces, or with '_' as the czsl script renames them)")


@dataclass(frozen=True)
class SplitFiles:
    """Where a compositional split's files are under DATA_ROOT and where they come from."""

    folder: str
    metadata: str
    phases: tuple[str, ...]
    source: str
    reference: str


SPLITS = {
    "natural": SplitFiles(
        "compositional-split-natural", "metadata_compositional-split-natural.t7", ("train", "val", "test"),
        "compositional_split_natural.tar.gz from senthilpurushwalkam.com/publications/compositional/ (unpacked into "
        "the data root as the czsl repository's utils/download_data.sh does)",
        "the generalized split of Purushwalkam et al. 2019"),
    "misra": SplitFiles(
        "compositional-split", "metadata.t7", ("train", "test"),
        "attr-ops-data.tar.gz of Attributes as Operators (www.cs.utexas.edu/~tushar/attribute-ops/; its "
        "utils/download_data.sh), whose mit-states/ folder holds it",
        "the split of Misra et al. 2017"),
}

Row = tuple[Path, str, str]  # (path, adjective, noun)


@dataclass
class Split:
    """A compositional split as read: its pairs and images per phase."""

    name: str
    pairs: dict[str, list[tuple[str, str]]]
    images: dict[str, list[Row]]
    missing: int


class MITStates(FileDataset):
    """MIT-States (Isola et al., CVPR 2015): the retrieval split of the TIRG paper, and the compositional splits.

    Protocol "test" (the default when images/<adjective noun>/ folders exist): images are
    images/<adjective noun>/*; the 49 test nouns (google/tirg's datasets.py) are the test
    split, every other noun trains. Training: an image of "adj1 noun" and the text "adj2"
    -> a random image of "adj2 noun", adj2 drawn among the noun's other adjectives. Test:
    one query per other adjective seen with the noun, against every test image; a hit is
    an image with the target's caption, and the protocol also reports recall when only the
    adjective ("adjective_recall@K") or only the noun ("noun_recall@K") has to match. A
    model trained on it has seen the classification splits' unseen pairs: never classify
    with it.

    Protocols "natural" and "misra": the compositional splits, read from their published
    files (compositional-split-natural/ with metadata_compositional-split-natural.t7;
    compositional-split/ with metadata.t7; images/<adj_noun>/ or images/<adj noun>/).
    Training pairs as above, restricted to the split's training pairs, so that its
    val and test pairs stay unseen; the retrieval test runs on the split's test images,
    ``--eval-every`` validates on the natural split's val images (misra has none). Their
    ``composition_task(split, phase)`` classifies images into (adjective, noun) pairs;
    the text of an adjective is the adjective alone.

    The vocabulary is fitted on the training captions, as in the reference code (plus the
    captions of the compositional splits' training pairs when their files are present).
    Pairs are drawn from the run's seed. Options: ``image_size`` (224), ``skip_unreadable``.
    """

    name = "mitstates"
    layout = LAYOUT
    protocol_names = ("test", "natural", "misra")
    composition_split_names = ("natural", "misra")
    default_loss = "batch_softmax"
    mods_per_source = 2  # google/tirg's batches: each source with two other adjectives

    def read(self) -> None:
        self._present = [name for name, files in SPLITS.items() if (self.root / files.folder / "train_pairs.txt").is_file()]
        self._splits: dict[str, Split] = {}
        self._missing_images: set[str] = set()
        self._training: dict[str, tuple[list[Row], dict[str, dict[str, list[int]]], list[int]]] = {}
        if not self._present:
            self._retrieval  # noqa: B018  (no compositional split: the retrieval tree is the dataset, read now)

    # ------------------------------------------------------------------ the retrieval split (protocol "test")

    @cached_property
    def _retrieval(self) -> dict[str, Any]:
        folder = self.root / "images"
        if not folder.is_dir():
            raise DatasetError(f"mitstates: {folder} not found; expected {LAYOUT}")
        images: dict[str, list[Row]] = {"train": [], "test": []}
        for pair in sorted(folder.iterdir()):
            if not pair.is_dir() or " " not in pair.name:
                continue
            adjective, noun = pair.name.split(" ", 1)
            if adjective == "adj":
                continue
            split = "test" if noun in TEST_NOUNS else "train"
            files = sorted(p for p in pair.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            images[split] += [(p, adjective, noun) for p in files]
        for split, rows in images.items():
            images[split] = self.keep_readable(rows, lambda row: (row[0],), what=f"mitstates {split}")
            if not images[split]:
                raise DatasetError(f"mitstates: no {split} images under {folder} (test nouns: armor, bracelet, ...); expected {LAYOUT}")
        adjectives = {split: self._adjectives(rows) for split, rows in images.items()}
        return {"images": images, "adjectives": adjectives, "sources": self._sources(images["train"], adjectives["train"])}

    @property
    def images(self) -> dict[str, list[Row]]:
        """The retrieval split's images: {"train": [(path, adjective, noun)], "test": [...]}."""
        return self._retrieval["images"]

    @property
    def adjectives(self) -> dict[str, dict[str, dict[str, list[int]]]]:
        return self._retrieval["adjectives"]

    @property
    def sources(self) -> list[int]:
        """Training sources of the retrieval split: images whose noun is seen with another adjective."""
        return self._retrieval["sources"]

    def _has_retrieval(self) -> bool:
        if not hasattr(self, "_retrieval_ok"):
            try:
                self._retrieval  # noqa: B018
                self._retrieval_ok = True
            except DatasetError:
                self._retrieval_ok = False
        return self._retrieval_ok

    @staticmethod
    def _adjectives(images: list[Row]) -> dict[str, dict[str, list[int]]]:
        """noun -> adjective -> the ids of its images."""
        index: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, (_, adjective, noun) in enumerate(images):
            index[noun][adjective].append(i)
        return index

    @staticmethod
    def _sources(images: list[Row], adjectives: dict[str, dict[str, list[int]]]) -> list[int]:
        return [i for i, (_, _, noun) in enumerate(images) if len(adjectives[noun]) >= 2]

    # ------------------------------------------------------------------ the compositional splits

    def protocols(self) -> list[str]:
        """"test" when the retrieval tree is there, then the compositional splits whose files are."""
        names = (["test"] if not self._present or self._has_retrieval() else []) + list(self._present)
        return names

    def protocol(self, name: str | None = None) -> RetrievalProtocol:
        if name in SPLITS and name not in self._present:
            self._split(name)  # names the missing file and where it comes from
        if name == "test" and "test" not in self.protocols():
            self._retrieval  # noqa: B018  (says what is missing)
        return super().protocol(name)

    def _split(self, name: str) -> Split:
        if name not in self._splits:
            self._splits[name] = self._read_split(name)
        return self._splits[name]

    @staticmethod
    def _missing(path: Path, files: SplitFiles) -> DatasetError:
        return DatasetError(f"mitstates: {path} not found; it is part of {files.reference}, which comes with {files.source}")

    def _read_pairs(self, path: Path, files: SplitFiles) -> list[tuple[str, str]]:
        if not path.is_file():
            raise self._missing(path, files)
        pairs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            words = line.split()
            if not words:
                continue
            if len(words) != 2:
                raise DatasetError(f"{path}:{number}: expected 'attribute object', found {line.strip()[:80]!r}")
            pairs.append((words[0], words[1]))
        if not pairs:
            raise DatasetError(f"{path} lists no pair")
        return pairs

    def _read_metadata(self, path: Path, files: SplitFiles) -> list[dict[str, str]]:
        if not path.is_file():
            raise self._missing(path, files)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, AttributeError, TypeError) as exc:
            named = re.search(r"GLOBAL ([\w.]+)", str(exc))
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = (f"it holds a {named.group(1)}" if named else
                      next((line for line in lines if "Unsupported" in line), lines[0] if lines else type(exc).__name__))
            raise DatasetError(f"{path} is not a plain PyTorch pickle of lists and dicts, so it is not read "
                               f"(torch.load with weights_only=True refused it: {reason[:200]}); it comes with "
                               f"{files.source}") from None
        if not isinstance(data, list) or not data:
            raise DatasetError(f"{path} holds a {type(data).__name__}, not the list of dicts (image, attr, obj) it should; "
                               f"it comes with {files.source}")
        for i, entry in enumerate(data):
            if not isinstance(entry, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
                kind = type(entry).__name__ if not isinstance(entry, dict) else next(
                    type(v).__name__ for k, v in entry.items() if not (isinstance(k, str) and isinstance(v, str)))
                raise DatasetError(f"{path}: entry {i} holds a {kind}; a metadata file is a list of dicts of strings "
                                   "(image, attr, obj, set), nothing else")
            if not {"image", "attr", "obj"} <= set(entry):
                raise DatasetError(f"{path}: entry {i} lacks {', '.join(sorted({'image', 'attr', 'obj'} - set(entry)))}")
        return data

    def _read_split(self, name: str) -> Split:
        files = SPLITS[name]
        folder = self.root / files.folder
        pairs = {phase: self._read_pairs(folder / f"{phase}_pairs.txt", files) for phase in files.phases}
        metadata = self._read_metadata(self.root / files.metadata, files)
        known = {p for phase_pairs in pairs.values() for p in phase_pairs}
        train_pairs = set(pairs["train"])
        images_root = self.root / "images"
        if not images_root.is_dir():
            raise DatasetError(f"mitstates {name}: {images_root} not found; it is {IMAGES_SOURCE}")
        # the published loaders read images/<image> of a tree whose folder names had their spaces made '_';
        # the release's own folders ("ancient building") are matched to those names as well
        folders = {p.name.replace(" ", "_"): p for p in images_root.iterdir() if p.is_dir()}
        listings: dict[str, set[str]] = {}
        rows: dict[str, list[Row]] = {phase: [] for phase in files.phases}
        missing: list[str] = []
        for entry in metadata:
            attr, obj = entry["attr"], entry["obj"]
            if attr == "NA" or entry.get("set") == "NA" or (attr, obj) not in known:
                continue  # unlabelled attributes, images of no set, pairs of no split: skipped as the loaders do
            if "set" in entry and name == "natural":
                phase = entry["set"] if entry["set"] in ("train", "val") else "test"
            else:  # the Misra split has no set: an image is a training image when its pair is a training pair
                phase = "train" if (attr, obj) in train_pairs else "test"
            folder_name, _, file_name = entry["image"].replace("\\", "/").partition("/")
            directory = folders.get(folder_name.replace(" ", "_"))
            if directory is not None and folder_name not in listings:
                listings[folder_name] = {p.name for p in directory.iterdir()}
            if directory is None or file_name not in listings[folder_name]:
                missing.append(entry["image"])
                continue
            rows[phase].append((directory / file_name, attr, obj))
        if missing and not self.skip_unreadable:
            raise DatasetError(f"mitstates {name}: {len(missing)} image(s) listed in {files.metadata} are not under "
                               f"{images_root} (first: {missing[0]}); the images are {IMAGES_SOURCE}; "
                               "--dataset-opt skip_unreadable=true skips them")
        if missing:
            warnings.warn(f"mitstates {name}: skipped {len(missing)} image(s) listed in {files.metadata} but not found "
                          f"(first: {missing[0]})", stacklevel=3)
        for phase in files.phases:
            rows[phase] = self.keep_readable(rows[phase], lambda row: (row[0],), what=f"mitstates {name} {phase}")
            if not rows[phase]:
                raise DatasetError(f"mitstates {name}: no {phase} image found (of the pairs of "
                                   f"{files.folder}/{phase}_pairs.txt) under {images_root}")
        self._missing_images.update(missing)
        self.skipped_images = len(self.unreadable) + len(self._missing_images)
        return Split(name, pairs, rows, len(missing))

    def split_counts(self, name: str) -> dict[str, int]:
        """Images per phase of the compositional split ``name`` (and how many listed images were missing)."""
        split = self._split(name)
        return {**{phase: len(rows) for phase, rows in split.images.items()}, "missing": split.missing}

    def build_composition_task(self, split: str, phase: str) -> CompositionTask:
        files = SPLITS[split]
        if phase not in files.phases or phase == "train":
            phases = [p for p in files.phases if p != "train"]
            raise DatasetError(f"mitstates {split} ({files.reference}) has no {phase!r} phase to classify; "
                               f"its phase{'s' if len(phases) > 1 else ''}: {', '.join(phases)}")
        data = self._split(split)
        pairs = sorted({p for phase_pairs in data.pairs.values() for p in phase_pairs})
        train, test = data.images["train"], data.images[phase]
        return CompositionTask(
            name=f"mitstates {split}/{phase}",
            images=ImageFiles([p for p, _, _ in test], self.preprocessing),
            labels=[(a, o) for _, a, o in test],
            train_pairs=data.pairs["train"], phase_pairs=data.pairs[phase], pairs=pairs,
            train_images=ImageFiles([p for p, _, _ in train], self.preprocessing),
            train_labels=[(a, o) for _, a, o in train],
            texts={a: a for a, _ in pairs},  # the adjective alone, as in retrieval training
            counts=self.split_counts(split), protocols=(split,),
        )

    # ------------------------------------------------------------------ training and retrieval protocols

    def _training_rows(self, protocol: str) -> tuple[list[Row], dict[str, dict[str, list[int]]], list[int]]:
        """(training images, noun -> adjective -> image ids, sources) of ``protocol``'s training split."""
        if protocol not in SPLITS:
            return self.images["train"], self.adjectives["train"], self.sources
        if protocol not in self._training:
            rows = self._split(protocol).images["train"]
            adjectives = self._adjectives(rows)
            self._training[protocol] = (rows, adjectives, self._sources(rows, adjectives))
        return self._training[protocol]

    def train_set(self, seed: int = 0, protocol: str | None = None) -> SampledPairs:
        protocol = protocol if protocol is not None else self.protocols()[0]
        rows, _, sources = self._training_rows(protocol)
        images = ImageFiles([p for p, _, _ in rows], self.preprocessing)
        return SampledPairs(images, len(sources) * PASSES, partial(self.draw, protocol=protocol), seed=seed,
                            what="mitstates", mods_of=partial(self.mods_of, protocol=protocol))

    def draw(self, index: int, rng: np.random.Generator, protocol: str = "test") -> tuple[int, str, int]:
        """Item ``index`` of ``protocol``'s training pairs: (source, text, target), the source cycling through the
        sources, the text another adjective of its noun, the target an image of that pair."""
        rows, adjectives, sources = self._training_rows(protocol)
        source = sources[index % len(sources)]
        _, adjective, noun = rows[source]
        others = [a for a in adjectives[noun] if a != adjective]
        target_adjective = others[rng.integers(len(others))]
        targets = adjectives[noun][target_adjective]
        return source, target_adjective, targets[rng.integers(len(targets))]

    def mods_of(self, source: int, protocol: str = "test") -> dict[str, list[int]]:
        """Training image ``source``'s modifications: each other adjective of its noun -> that pair's images."""
        rows, adjectives, _ = self._training_rows(protocol)
        _, adjective, noun = rows[source]
        return {a: ids for a, ids in adjectives[noun].items() if a != adjective}

    def train_texts(self) -> list[str]:
        texts = [f"{adjective} {noun}" for _, adjective, noun in self.images["train"]] if self._has_retrieval() else []
        extra = sorted({f"{a} {o}" for name in self._present for a, o in self._split(name).pairs["train"]} - set(texts))
        return texts + extra

    def test_queries(self, rows: list[Row] | None = None) -> list[tuple[int, str, str]]:
        """(source id, target adjective, noun): one per other adjective seen with the source's noun among ``rows``
        (default: the retrieval split's test images)."""
        rows = self.images["test"] if rows is None else rows
        adjectives = self._adjectives(rows)
        return [(i, target, noun) for i, (_, adjective, noun) in enumerate(rows) for target in adjectives[noun]
                if target != adjective]

    def _retrieval_protocol(self, name: str, rows: list[Row]) -> RetrievalProtocol:
        queries = self.test_queries(rows)
        if not queries:
            raise DatasetError(f"mitstates: no test noun has two adjectives, so there are no queries ({name})")
        views = {"label": [f"{a} {n}" for _, a, n in rows], "adjective": [a for _, a, _ in rows], "noun": [n for _, _, n in rows]}
        return RetrievalProtocol.from_queries(
            name, ImageFiles([p for p, _, _ in rows], self.preprocessing), views,
            [(source, adjective, {"label": f"{adjective} {noun}", "adjective": adjective, "noun": noun})
             for source, adjective, noun in queries],
        )

    def build_protocol(self, name: str) -> RetrievalProtocol:
        rows = self._split(name).images["test"] if name in SPLITS else self.images["test"]
        return self._retrieval_protocol(name, rows)

    def validation(self, seed: int = 0, protocol: str | None = None) -> RetrievalProtocol | None:
        """The natural split's val images, queried as the test images are, for a run that trains on that split;
        the misra split has none (an error), the retrieval split none."""
        if protocol == "natural":
            return self._retrieval_protocol("natural-val", self._split("natural").images["val"])
        if protocol == "misra":
            raise DatasetError("mitstates misra: the split of Misra et al. 2017 has train and test pairs only, no "
                               "validation set for --eval-every; validate with --protocol natural")
        return None
