"""Datasets read from files: Fashion200k, MIT-States, and the user's own triplets."""

from compose_retrieval import hookimpl

from .fashion200k import Fashion200k
from .mitstates import MITStates
from .triplets import UserTriplets


@hookimpl
def register_datasets(register):
    register("fashion200k", Fashion200k)
    register("mitstates", MITStates)
    register("triplets", UserTriplets)
