"""Datasets read from files: the user's own triplets (and, to come, the public datasets of the TIRG paper)."""

from compose_retrieval import hookimpl

from .triplets import UserTriplets


@hookimpl
def register_datasets(register):
    register("triplets", UserTriplets)
