from __future__ import annotations

import string
from typing import Iterable

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def tokenize(text: str) -> list[str]:
    """Lower-case, ASCII only, punctuation removed, split on white space (as google/tirg)."""
    return text.encode("ascii", "ignore").decode("ascii").lower().translate(_DROP_PUNCTUATION).split()


class Vocabulary:
    """Words -> ids. Id 0 is the unknown word; the other ids follow sorted word order."""

    UNKNOWN = 0

    def __init__(self, words: Iterable[str] = ()):
        self.words = sorted(set(words))
        self._ids = {w: i + 1 for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "Vocabulary":
        return cls(w for t in texts for w in tokenize(t))

    def __len__(self) -> int:
        return len(self.words) + 1

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.UNKNOWN) for w in tokenize(text)]
