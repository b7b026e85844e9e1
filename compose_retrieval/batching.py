"""How a run's training pairs become batches: shuffled pairs, or batches that hold several texts of one source."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import ComposeRetrievalError, DatasetError

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["SameSourceBatches", "RunOrder", "training_loader", "endless"]


class SameSourceBatches(torch.utils.data.Dataset):
    """Training batches in which every source comes with ``per_source`` different texts.

    google/tirg's CSS and MIT-States loaders make every second item reuse the previous
    item's source with another modification, and a batch is filled by consecutive
    items: each batch holds B/2 sources, each with two texts and two targets. A query's
    negatives then include the other edit of its own image, so the text must decide
    between two targets of one source. This dataset makes that composition a choice
    for any training set that lists a source's modifications (``mods_of``): item ``b``
    is a whole batch (a dict of stacked "source" and "target" images and a list of
    "text"), drawn from a numpy Generator seeded by (``seed``, ``b``), so it is the same
    batch in any process and with any number of DataLoader workers. For each group the
    first pair is the training set's own draw (``triplet`` of a random item, keeping the
    dataset's weighting of sources); the others take other texts of the same source,
    without repeats, each with one of its targets. A source with too few texts is drawn
    again. An epoch holds as many pairs as the training set (``len(train_set) // B`` batches);
    any index is a batch (``RunOrder`` gives epoch ``e`` the indices ``e * len + b``), so
    every epoch draws new batches and a run over fixed triplets (``Triplets``) meets new
    groupings of its pairs each time it passes over them.

    ``rank`` of ``world`` processes (distributed training): item ``b`` is that process's share
    of batch ``b``, the ``rank``-th of ``world`` equal runs of whole groups (a source's texts
    stay in one process); the shares of all ranks, in rank order, are the whole batch.
    """

    def __init__(self, train_set, batch_size: int, per_source: int, seed: int = 0, *, tries: int = 1000,
                 rank: int = 0, world: int = 1):
        if per_source < 1 or batch_size % per_source:
            raise DatasetError(f"a batch of {batch_size} cannot hold groups of {per_source} pairs of one source; "
                               "choose --mods-per-source dividing --batch-size")
        if (batch_size // per_source) % world:
            raise DatasetError(f"a batch of {batch_size // per_source} groups of {per_source} pairs of one source cannot be "
                               f"shared equally by {world} processes; choose --batch-size a multiple of "
                               f"{per_source * world} (--mods-per-source x processes)")
        self.train_set, self.batch_size, self.per_source, self.seed, self.tries = train_set, batch_size, per_source, seed, tries
        self.rank, self.world = rank, world
        self.triplets(0)  # a composition the data cannot give fails here, in the main process, as one line

    def __len__(self) -> int:
        return len(self.train_set) // self.batch_size

    def group(self, rng: np.random.Generator) -> list[tuple[int, str, int]]:
        """One source with ``per_source`` different texts: (source, text, target) each."""
        for _ in range(self.tries):
            source, text, target = self.train_set.triplet(int(rng.integers(len(self.train_set))))
            mods = self.train_set.mods_of(source)
            others = [t for t in mods if t != text]
            if len(others) >= self.per_source - 1:
                chosen = [others[i] for i in rng.choice(len(others), self.per_source - 1, replace=False)]
                return [(source, text, target)] + [(source, t, mods[t][rng.integers(len(mods[t]))]) for t in chosen]
        raise DatasetError(f"no source of the training set met in {self.tries} draws has {self.per_source} different "
                           f"texts; lower --mods-per-source")

    def triplets(self, index: int) -> list[tuple[int, str, int]]:
        """The (source, text, target) of batch ``index``, without loading images."""
        rng = np.random.default_rng((self.seed, index))
        return [item for _ in range(self.batch_size // self.per_source) for item in self.group(rng)]

    def share(self, index: int) -> list[tuple[int, str, int]]:
        """This rank's items of batch ``index``: the whole batch is drawn (the same draws in every process) and cut
        into ``world`` equal runs of whole groups."""
        items, size = self.triplets(index), self.batch_size // self.world
        return items[self.rank * size : (self.rank + 1) * size]

    def __getitem__(self, index: int) -> dict:
        items = self.share(index)
        return {
            "source": torch.stack([self.train_set.source_images[s] for s, _, _ in items]),
            "text": [text for _, text, _ in items],
            "target": torch.stack([self.train_set.images[t] for _, _, t in items]),
        }


class RunOrder(torch.utils.data.Sampler):
    """The order of a run's batches, step by step, from any step: what makes a resumed run see the batches the
    uninterrupted one would have.

    Epoch ``e`` shuffles the ``per_epoch`` batches with a generator seeded by (``seed``, ``e``);
    step ``s`` is batch ``s % per_epoch`` of epoch ``s // per_epoch``. With ``whole_batches``
    it yields one index per step, ``e * per_epoch + b`` (a SameSourceBatches item: each epoch
    draws new batches); otherwise the ``batch_size`` item indices of the batch (``items`` items,
    the last partial batch dropped). Endless: the training loop stops at its step count.

    ``rank`` of ``world`` processes (distributed training): the order is the same in every
    process, and each yields its share of a batch's item indices, the ``rank``-th of ``world``
    equal runs, so the shares in rank order are the single process's batch. Whole batches
    are shared by the dataset (``SameSourceBatches``): every rank yields the same index.
    """

    def __init__(self, items: int, batch_size: int, seed: int, start: int = 0, *, whole_batches: bool = False,
                 rank: int = 0, world: int = 1):
        if not whole_batches and batch_size % world:
            raise ComposeRetrievalError(f"a batch of {batch_size} cannot be shared equally by {world} processes; "
                                        f"choose --batch-size a multiple of {world}")
        self.items, self.batch_size, self.seed, self.start, self.whole_batches = items, batch_size, seed, start, whole_batches
        self.rank, self.world = rank, world
        self.per_epoch = items if whole_batches else items // batch_size

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence((self.seed, epoch)).generate_state(1)[0]))
        return torch.randperm(self.items, generator=generator).tolist()

    def __iter__(self):
        step, epoch, order = self.start, None, []
        while True:
            e, j = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, order = e, self.order(e)
            if self.whole_batches:
                yield e * self.per_epoch + order[j]
            else:
                share = self.batch_size // self.world
                first = j * self.batch_size + self.rank * share
                yield order[first : first + share]
            step += 1


def training_loader(
    train_set: torch.utils.data.Dataset, config: TrainConfig, device: torch.device, start: int = 0, *,
    rank: int = 0, world: int = 1,
) -> torch.utils.data.DataLoader:
    """The batches of a run from step ``start``: shuffled pairs, or with ``config.mods_per_source`` > 1 batches in
    which every source comes with that many different texts (SameSourceBatches); the same batches with any number of
    workers, and the same from a resumed step as in an uninterrupted run (RunOrder). ``rank`` of ``world`` processes
    (distributed training): this process's share of each of those batches (``config.batch_size`` is the global batch)."""
    # the generator only seeds the workers: drawing their seeds from the global random state would make a resumed run's
    # dropout differ from the uninterrupted one's
    common = dict(num_workers=config.num_workers, persistent_workers=config.num_workers > 0, pin_memory=device.type == "cuda",
                  generator=torch.Generator().manual_seed(config.seed))
    if (config.mods_per_source or 1) > 1:
        batches = SameSourceBatches(train_set, config.batch_size, config.mods_per_source, config.seed, rank=rank, world=world)
        per_epoch = len(batches)
        order = RunOrder(per_epoch, 1, config.seed, start, whole_batches=True)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=order, **common)
    else:
        per_epoch = len(train_set) // config.batch_size
        order = RunOrder(len(train_set), config.batch_size, config.seed, start, rank=rank, world=world)
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=order, **common)
    if per_epoch == 0:
        raise ComposeRetrievalError(
            f"dataset {config.dataset!r} has fewer training pairs than one batch of {config.batch_size}; lower --batch-size"
        )
    return loader


def endless(loader):
    """The loader's batches, with a DatasetError raised in a worker reduced to its own one line."""
    while True:
        try:
            yield from loader
        except DatasetError as exc:
            # raised in a DataLoader worker, it arrives with the worker's traceback in its message: keep the last line
            raise DatasetError(str(exc).strip().splitlines()[-1].split("DatasetError: ", 1)[-1]) from None
