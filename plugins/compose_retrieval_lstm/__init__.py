"""The LSTM text encoder of TIRG, with a vocabulary built from the training texts.

Texts are split into words by the "unicode" tokenizer (any script) or "ascii"
(google/tirg's rule, for its checkpoints and for ours saved before the choice existed).
"""

from compose_retrieval import hookimpl

from .encoder import LSTMTextEncoder
from .vocabulary import TOKENIZERS, Vocabulary, ascii_tokenize, unicode_tokenize

__all__ = ["LSTMTextEncoder", "TOKENIZERS", "Vocabulary", "ascii_tokenize", "unicode_tokenize"]


@hookimpl
def register_text_encoders(register):
    register("lstm", LSTMTextEncoder)
