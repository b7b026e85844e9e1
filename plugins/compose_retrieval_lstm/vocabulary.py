from __future__ import annotations

import string
from typing import Iterable

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def tokenize(text: str) -> list[str]:
    """Lower-case, ASCII only, punctuation removed, split on white space (as google/tirg)."""
    return text.encode("ascii", "ignore").decode("ascii").lower().translate(_DROP_PUNCTUATION).split()


class Vocabulary:
    """Words -> ids: id 0 is the unknown word, word ``i`` of ``words`` has id ``i + 1``.

    ``from_texts`` (what training fits) orders the words by sorting them;
    ``in_order_of`` numbers them by first appearance, as google/tirg's SimpleVocab does,
    so that its checkpoints' embedding rows line up. A checkpoint stores the words in
    id order, and ``Vocabulary(words)`` keeps that order.
    """

    UNKNOWN = 0

    def __init__(self, words: Iterable[str] = ()):
        self.words = list(dict.fromkeys(words))
        self._ids = {w: i + 1 for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "Vocabulary":
        return cls(sorted({w for t in texts for w in tokenize(t)}))

    @classmethod
    def in_order_of(cls, texts: Iterable[str]) -> "Vocabulary":
        """Ids by first appearance in ``texts`` (google/tirg's rule)."""
        return cls(w for t in texts for w in tokenize(t))

    def __len__(self) -> int:
        return len(self.words) + 1

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.UNKNOWN) for w in tokenize(text)]
