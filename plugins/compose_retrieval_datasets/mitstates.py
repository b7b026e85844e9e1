"""mitstates: Isola et al., CVPR 2015, as the TIRG paper retrieves in it (google/tirg)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from compose_retrieval import IMAGE_SUFFIXES, PASSES, DatasetError, FileDataset, ImageFiles, RetrievalProtocol, SampledPairs

LAYOUT = "DATA_ROOT/images/<adjective noun>/<file>.jpg (folders without a space, and the 'adj <noun>' placeholders, are skipped)"

TEST_NOUNS = frozenset(
    "armor bracelet bush camera candy castle ceramic cheese clock clothes coffee fan fig fish foam forest fruit "
    "furniture garden gate glass horse island laptop lead lightning mirror orange paint persimmon plastic plate "
    "potato road rubber sand shell sky smoke steel stream table tea tomato vacuum wax wheel window wool".split()
)


class MITStates(FileDataset):
    """MIT-States (Isola et al., CVPR 2015), the retrieval split of the TIRG paper.

    Images are images/<adjective noun>/*; the 49 test nouns (google/tirg's datasets.py) are
    the test split, every other noun trains. Training: an image of "adj1 noun" and the
    text "adj2" -> a random image of "adj2 noun", adj2 drawn among the noun's other
    adjectives. Test: one query per other adjective seen with the noun, against every
    test image; a hit is an image with the target's caption, and the protocol also
    reports recall when only the adjective ("adjective_recall@K") or only the noun
    ("noun_recall@K") has to match. The vocabulary is fitted on the training captions,
    as in the reference code. Pairs are drawn from the run's seed. Options:
    ``image_size`` (224), ``skip_unreadable``.
    """

    name = "mitstates"
    layout = LAYOUT
    protocol_names = ("test",)
    default_loss = "batch_softmax"
    mods_per_source = 2  # google/tirg's batches: each source with two other adjectives

    def read(self) -> None:
        folder = self.root / "images"
        if not folder.is_dir():
            raise DatasetError(f"mitstates: {folder} not found; expected {LAYOUT}")
        self.images: dict[str, list[tuple[Path, str, str]]] = {"train": [], "test": []}  # (path, adjective, noun)
        for pair in sorted(folder.iterdir()):
            if not pair.is_dir() or " " not in pair.name:
                continue
            adjective, noun = pair.name.split(" ", 1)
            if adjective == "adj":
                continue
            split = "test" if noun in TEST_NOUNS else "train"
            files = sorted(p for p in pair.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.images[split] += [(p, adjective, noun) for p in files]
        for split, images in self.images.items():
            self.images[split] = self.keep_readable(images, lambda row: (row[0],), what=f"mitstates {split}")
            if not self.images[split]:
                raise DatasetError(f"mitstates: no {split} images under {folder} (test nouns: armor, bracelet, ...); expected {LAYOUT}")
        self.adjectives = {split: self._adjectives(images) for split, images in self.images.items()}
        # training sources: images whose noun is seen with another adjective
        self.sources = [i for i, (_, _, noun) in enumerate(self.images["train"]) if len(self.adjectives["train"][noun]) >= 2]

    @staticmethod
    def _adjectives(images: list[tuple[Path, str, str]]) -> dict[str, dict[str, list[int]]]:
        """noun -> adjective -> the ids of its images."""
        index: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, (_, adjective, noun) in enumerate(images):
            index[noun][adjective].append(i)
        return index

    def draw(self, index: int, rng: np.random.Generator) -> tuple[int, str, int]:
        """Item ``index`` of the training pairs: (source, text, target), the source cycling through ``self.sources``."""
        source = self.sources[index % len(self.sources)]
        _, adjective, noun = self.images["train"][source]
        others = [a for a in self.adjectives["train"][noun] if a != adjective]
        target_adjective = others[rng.integers(len(others))]
        targets = self.adjectives["train"][noun][target_adjective]
        return source, target_adjective, targets[rng.integers(len(targets))]

    def mods_of(self, source: int) -> dict[str, list[int]]:
        """Training image ``source``'s modifications: each other adjective of its noun -> that pair's images."""
        _, adjective, noun = self.images["train"][source]
        return {a: ids for a, ids in self.adjectives["train"][noun].items() if a != adjective}

    def train_set(self, seed: int = 0, protocol: str | None = None) -> SampledPairs:
        train = self.images["train"]
        images = ImageFiles([p for p, _, _ in train], self.preprocessing)
        return SampledPairs(images, len(self.sources) * PASSES, self.draw, seed=seed, what="mitstates", mods_of=self.mods_of)

    def train_texts(self) -> list[str]:
        return [f"{adjective} {noun}" for _, adjective, noun in self.images["train"]]

    def test_queries(self) -> list[tuple[int, str, str]]:
        """(source id, target adjective, noun): one per other adjective seen with the source's noun."""
        return [
            (i, target, noun)
            for i, (_, adjective, noun) in enumerate(self.images["test"])
            for target in self.adjectives["test"][noun]
            if target != adjective
        ]

    def build_protocol(self, name: str) -> RetrievalProtocol:
        test = self.images["test"]
        queries = self.test_queries()
        if not queries:
            raise DatasetError("mitstates: no test noun has two adjectives, so there are no queries")
        views = {"label": [f"{a} {n}" for _, a, n in test], "adjective": [a for _, a, _ in test], "noun": [n for _, _, n in test]}
        return RetrievalProtocol.from_queries(
            name, ImageFiles([p for p, _, _ in test], self.preprocessing), views,
            [(source, adjective, {"label": f"{adjective} {noun}", "adjective": adjective, "noun": noun})
             for source, adjective, noun in queries],
        )
