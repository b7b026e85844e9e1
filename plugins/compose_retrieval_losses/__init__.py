"""The losses of the TIRG paper, section 3.3: soft triplet (K = 2) and batch softmax (K = B)."""

from compose_retrieval import hookimpl

from .batch_softmax import BatchSoftmaxLoss
from .similarity import similarity_matrix
from .soft_triplet import SoftTripletLoss


@hookimpl
def register_losses(register):
    register("soft_triplet", SoftTripletLoss)
    register("batch_softmax", BatchSoftmaxLoss)
