"""Tokenizers and the word -> id vocabulary of the LSTM text encoder.

Two tokenizers, chosen by name and saved with the vocabulary in a checkpoint:

``ascii``    google/tirg's rule, unchanged: lower-case, non-ASCII characters dropped,
             ASCII punctuation removed, split on white space ("größer" -> "grer").
             Imported google/tirg checkpoints and every checkpoint saved before the
             tokenizer was recorded use it.
``unicode``  the default for new training: NFKC-normalised and case-folded
             (``str.casefold``, so "Größer" and "GRÖSSER" are one word, "grösser"),
             punctuation removed (Unicode categories P*, so "top-left" -> "topleft" as
             in google/tirg), split on white space; each CJK ideograph and kana is a
             token by itself (those scripts are written without spaces), and so is each
             symbol (categories S*, e.g. emoji), with the combining marks, variation
             selectors, skin tones and zero-width joins that belong to it.
"""

from __future__ import annotations

import string
import unicodedata
from typing import Callable, Iterable

from compose_retrieval.errors import OptionError

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ZWJ = "\u200d"  # zero width joiner: glues emoji into one (a family, a profession)
_SKIN_TONES = ("\U0001f3fb", "\U0001f3ff")  # emoji modifiers (category Sk) that belong to the emoji before
_WITHOUT_SPACES = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA")


def ascii_tokenize(text: str) -> list[str]:
    """Lower-case, ASCII only, punctuation removed, split on white space (as google/tirg)."""
    return text.encode("ascii", "ignore").decode("ascii").lower().translate(_DROP_PUNCTUATION).split()


tokenize = ascii_tokenize  # the name this module exported before there were two rules


def _alone(ch: str, category: str) -> bool:
    """Whether ``ch`` is a token by itself: a symbol, or a character of a script written without spaces."""
    return category[0] == "S" or (ch >= "\u2e80" and unicodedata.name(ch, "").startswith(_WITHOUT_SPACES))


def unicode_tokenize(text: str) -> list[str]:
    """Case-folded words split on white space, punctuation removed; CJK characters and symbols one token each."""
    tokens: list[str] = []
    in_word = False  # whether the next letter extends tokens[-1] (False after white space, a symbol, a CJK character)
    after_space = True
    for ch in unicodedata.normalize("NFKC", text).casefold():
        category = unicodedata.category(ch)
        if ch.isspace():
            in_word, after_space = False, True
            continue
        if category[0] == "P":
            continue
        if not after_space and (category[0] == "M" or ch == _ZWJ or tokens[-1][-1] == _ZWJ
                                or _SKIN_TONES[0] <= ch <= _SKIN_TONES[1]):
            tokens[-1] += ch  # belongs to the character before
        elif _alone(ch, category):
            tokens.append(ch)
            in_word = False
        elif in_word:
            tokens[-1] += ch
        else:
            tokens.append(ch)
            in_word = True
        after_space = False
    return tokens


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"unicode": unicode_tokenize, "ascii": ascii_tokenize}


def tokenizer_named(name: str) -> Callable[[str], list[str]]:
    if name not in TOKENIZERS:
        raise OptionError(f"unknown tokenizer {name!r}; use one of {', '.join(map(repr, TOKENIZERS))}")
    return TOKENIZERS[name]


class Vocabulary:
    """Words -> ids: id 0 is the unknown word, word ``i`` of ``words`` has id ``i + 1``.

    The vocabulary knows its tokenizer (``"ascii"`` unless told, the rule of every
    vocabulary made before there were two), so ``encode`` splits texts as the
    vocabulary was built. ``from_texts`` (what training fits) orders the words by
    sorting them; ``in_order_of`` numbers them by first appearance, as google/tirg's
    SimpleVocab does, so that its checkpoints' embedding rows line up. A checkpoint
    stores the words in id order, and ``Vocabulary(words)`` keeps that order.
    """

    UNKNOWN = 0

    def __init__(self, words: Iterable[str] = (), tokenizer: str = "ascii"):
        self._tokenize = tokenizer_named(tokenizer)
        self.tokenizer = tokenizer
        self.words = list(dict.fromkeys(words))
        self._ids = {w: i + 1 for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer: str = "ascii") -> "Vocabulary":
        tokenize = tokenizer_named(tokenizer)
        return cls(sorted({w for t in texts for w in tokenize(t)}), tokenizer)

    @classmethod
    def in_order_of(cls, texts: Iterable[str], tokenizer: str = "ascii") -> "Vocabulary":
        """Ids by first appearance in ``texts`` (google/tirg's rule)."""
        tokenize = tokenizer_named(tokenizer)
        return cls((w for t in texts for w in tokenize(t)), tokenizer)

    def __len__(self) -> int:
        return len(self.words) + 1

    def tokenize(self, text: str) -> list[str]:
        return self._tokenize(text)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.UNKNOWN) for w in self._tokenize(text)]
