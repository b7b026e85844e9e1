"""The LSTM text encoder of TIRG, with a vocabulary built from the training texts."""

from compose_retrieval import hookimpl

from .encoder import LSTMTextEncoder
from .vocabulary import Vocabulary


@hookimpl
def register_text_encoders(register):
    register("lstm", LSTMTextEncoder)
