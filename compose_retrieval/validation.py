"""The validation set of a run: the dataset's own split, or a seeded slice of its training pairs held out."""

from __future__ import annotations

import numpy as np
import torch

from .data import Triplets
from .errors import DatasetError
from .protocol import RetrievalProtocol

__all__ = ["hold_out"]


def hold_out(train_set: torch.utils.data.Dataset, count: int, seed: int) -> tuple[Triplets, RetrievalProtocol]:
    """(the training pairs left, a protocol over ``count`` pairs held out from them), drawn from ``seed``.

    The held-out pairs are queries against a gallery of every image of the training set:
    a hit is the pair's target, the query's own source is not ranked. Only a training set
    of fixed pairs (``Triplets``) can give pairs up; one that draws its pairs by a rule
    (``SampledPairs``) cannot, and its dataset needs a validation split of its own
    (``Dataset.validation()``).
    """
    if not isinstance(train_set, Triplets):
        raise DatasetError(f"the training set ({type(train_set).__name__}) draws its pairs by a rule, so none can be "
                           "held out for --eval-every; the dataset needs a validation split of its own (Dataset.validation())")
    if not 0 < count < len(train_set):
        raise DatasetError(f"cannot hold out {count} of {len(train_set)} training pairs for validation; "
                           "choose --val-pairs between 1 and the number of pairs less one")
    order = np.random.default_rng((seed, 7919)).permutation(len(train_set))
    held, kept = sorted(order[:count].tolist()), sorted(order[count:].tolist())
    rest = Triplets(train_set.images, [train_set.sources[i] for i in kept], [train_set.texts[i] for i in kept],
                    [train_set.targets[i] for i in kept], source_images=train_set.source_images)
    # sources drawn differently from targets (css's 2d-to-3d) are query images of their own; otherwise the gallery's
    separate = train_set.source_images is not train_set.images
    protocol = RetrievalProtocol.from_queries(
        "validation", train_set.images, list(range(len(train_set.images))),
        [(train_set.sources[i], train_set.texts[i], train_set.targets[i]) for i in held], targets="index",
        query_images=train_set.source_images if separate else None,
        query_image_in_gallery=[-1] * len(train_set.source_images) if separate else None,
    )
    return rest, protocol
