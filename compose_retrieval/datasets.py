"""The dataset plugin contract, and the bases that do a dataset's routine work.

A dataset gives the engine training triplets and test protocols. Subclass
``Dataset`` (data made in memory) or ``FileDataset`` (data read from files under
``--data-root``), declare the protocol names, and write four methods::

    class MyDataset(FileDataset):
        \"\"\"One line that `compose-retrieval list datasets` shows.\"\"\"

        layout = "DATA_ROOT/images/*.png and DATA_ROOT/pairs.csv"   # shown in errors
        protocol_names = ("test",)                                   # the first is the default
        default_loss = "batch_softmax"                              # or None: the recipe's

        def read(self): ...                      # read the files under self.root
        def train_set(self, seed, protocol): ... # a torch Dataset of training items
        def train_texts(self): ...               # every training text (fits the vocabulary)
        def build_protocol(self, name): ...      # RetrievalProtocol.from_queries(...)

    @hookimpl
    def register_datasets(register):
        register("my-dataset", MyDataset)

Users set options (``--dataset-opt KEY=VALUE``) through the constructor's keyword
arguments; their annotations are checked before anything is built, so write them as
a component's (``Annotated[int, Range(8, 4096)]``). The engine passes ``data_root``.

Images: every image the engine receives, in a training item or from a protocol's
gallery and query images, is a float tensor (3, S, S) made by the dataset's
``preprocessing`` (resize, then normalisation). The engine may replace
``dataset.preprocessing`` after construction (evaluating a checkpoint feeds images as
the checkpoint was trained), so make image sets in ``train_set()`` and
``build_protocol()`` from ``self.preprocessing`` (``ImageFiles(paths,
self.preprocessing)``), never in ``__init__``.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Iterable, Sequence, TypeVar

import torch

from .data import read_image
from .errors import DatasetError
from .options import Range
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .protocol import RetrievalProtocol

if TYPE_CHECKING:
    from .composition import CompositionTask

__all__ = ["Dataset", "FileDataset"]

Row = TypeVar("Row")


class Dataset:
    """A dataset plugin: training triplets and test protocols.

    A subclass defines:

    - ``train_set(seed, protocol)``: a torch Dataset whose items are dicts
      ``{"source": Tensor, "text": str, "target": Tensor}``, the images preprocessed
      float tensors (3, S, S) (``Triplets`` and ``SampledPairs`` of
      ``compose_retrieval`` make them). A dataset that draws its pairs at random draws
      them from ``seed``, the run's seed; ``protocol`` is the name of the protocol the
      run is tested on, for a dataset whose training follows it (css's 2d-to-3d trains
      from flat drawings to renders); most ignore it.
    - ``train_texts()``: every training text, for fitting a text encoder's vocabulary.
    - ``protocol_names`` (or ``protocols()``, when they depend on options): the names
      of the test protocols, the first one the default.
    - ``build_protocol(name)``: the ``RetrievalProtocol`` called ``name``, usually made
      with ``RetrievalProtocol.from_queries``. The engine calls ``protocol(name)``,
      which checks the name first: ``build_protocol`` only meets declared names.

    Class attributes: ``default_loss``, the loss a run uses unless the user or the recipe
    names one (a recipe may force its own, as the built-in cpu recipe does; None: the
    recipe's fallback); ``mods_per_source``, how many different texts of one source
    a training batch holds by default (1: pairs drawn independently; 2: google/tirg's
    CSS and MIT-States batches; above 1 the training set must list a source's
    modifications, ``mods_of(source) -> {text: [targets]}``, as ``Triplets`` and
    ``SampledPairs`` do); ``name``, the name messages use (default: the registered
    name, else the class name); ``description`` (default: the docstring's first line).

    Optional: ``composition_split_names`` and ``build_composition_task(split, phase)``, a
    compositional classification task (``compose_retrieval.composition.CompositionTask``)
    that ``compose-retrieval classify`` and ``compose_retrieval.classify`` run.

    Attributes every instance has: ``preprocessing`` (a ``Preprocessing``, set in
    ``__init__``; see the module docstring for why it is read late), and
    ``skipped_images``, how many unreadable images the dataset skipped, which a run
    records in its metrics (``FileDataset`` keeps it).
    """

    description: ClassVar[str] = ""
    name: ClassVar[str] = ""
    default_loss: ClassVar[str | None] = None
    mods_per_source: ClassVar[int] = 1
    protocol_names: ClassVar[tuple[str, ...]] = ()
    skipped_images: int = 0
    """How many unreadable images the dataset skipped (``skip_unreadable``); a run records it in its metrics."""
    preprocessing: Preprocessing

    def config(self) -> dict[str, Any]:
        """The options the dataset was built with (the registry records them)."""
        return dict(getattr(self, "_options", {}))

    def display_name(self) -> str:
        """The dataset's name in messages: ``name``, else the registered name, else the class name."""
        return self.name or getattr(self, "_registry_name", None) or type(self).__name__

    def train_set(self, seed: int = 0, protocol: str | None = None) -> torch.utils.data.Dataset:
        """The training items; see the class docstring."""
        raise NotImplementedError(f"{type(self).__name__} must define train_set(seed, protocol)")

    def train_texts(self) -> list[str]:
        """Every training text, for fitting a vocabulary."""
        raise NotImplementedError(f"{type(self).__name__} must define train_texts()")

    def protocols(self) -> list[str]:
        """The names of the test protocols, the default first (``protocol_names`` unless overridden)."""
        return list(self.protocol_names)

    def validation(self, seed: int = 0, protocol: str | None = None) -> RetrievalProtocol | None:
        """The protocol of the dataset's validation split for a run that trains for ``protocol`` (as ``train_set``
        gets it), for ``--eval-every``; None (the default) when it has none, and the engine holds out a seeded
        slice of the training pairs instead (a training set of fixed pairs, ``Triplets``, can give them up; one
        that draws its pairs by a rule cannot)."""
        return None

    composition_split_names: ClassVar[tuple[str, ...]] = ()
    """The splits of the optional compositional classification task (``composition_task``), the default first."""

    def composition_splits(self) -> list[str]:
        """The names of the compositional classification splits (``composition_split_names`` unless overridden)."""
        return list(self.composition_split_names)

    def composition_task(self, split: str | None = None, phase: str = "test") -> CompositionTask:
        """Optional: the compositional classification task of ``split`` (None: the first of ``composition_splits()``)
        for ``phase`` ("val" or "test"), a ``compose_retrieval.composition.CompositionTask``; checks the split name
        and calls ``build_composition_task``. A dataset without such a task (the default) says so in one line."""
        names = self.composition_splits()
        if not names:
            raise DatasetError(f"{self.display_name()} offers no compositional classification task")
        split = names[0] if split is None else split
        if split not in names:
            raise DatasetError(f"{self.display_name()} has no classification split {split!r}; its splits: {', '.join(names)}")
        task = self.build_composition_task(split, phase)
        task.split, task.phase = split, phase
        return task

    def build_composition_task(self, split: str, phase: str) -> CompositionTask:
        """The ``CompositionTask`` of ``split`` (one of ``composition_splits()``) for ``phase``."""
        raise NotImplementedError(f"{type(self).__name__} must define build_composition_task(split, phase)")

    def protocol(self, name: str | None = None) -> RetrievalProtocol:
        """The test protocol ``name`` (None: the first of ``protocols()``); an unknown name is a one-line error."""
        names = self.protocols()
        if not names:
            raise DatasetError(f"{self.display_name()} declares no test protocol; give it protocol_names")
        if name is None:
            name = names[0]
        if name not in names:
            folded = {n.lower(): n for n in names}
            close = [folded[c] for c in difflib.get_close_matches(name.lower(), list(folded), n=1)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listing = f"its protocol: {names[0]}" if len(names) == 1 else f"its protocols: {', '.join(names)}"
            raise DatasetError(f"{self.display_name()} has no protocol {name!r}{hint}; {listing}")
        return self.build_protocol(name)

    def build_protocol(self, name: str) -> RetrievalProtocol:
        """The protocol ``name``, one of ``protocols()`` (``protocol()`` has checked it)."""
        raise NotImplementedError(f"{type(self).__name__} must define build_protocol(name)")


class FileDataset(Dataset):
    """A dataset read from files under ``--data-root``: the checks, preprocessing and skipping every such dataset needs.

    The constructor takes ``data_root`` (from the engine), and the options
    ``image_size`` (224) and ``skip_unreadable`` (False). It refuses a missing
    ``data_root`` ("give --data-root DIR laid out as <layout>") or one that is not a
    folder, sets ``self.root`` (a Path), sets ``self.preprocessing`` (decoded images
    resized on the shorter side and centre-cropped to ``image_size``, normalised with
    the ImageNet mean and std; a subclass that passes ``image_size=None`` sets it
    itself), then calls ``self.read()``, where a subclass reads its files. A subclass
    with more options overrides ``__init__`` with them all in its signature (that is
    how users discover them), stores the ones ``read()`` needs, and calls
    ``super().__init__(data_root, image_size, skip_unreadable)``.

    Unreadable images: ``keep_readable(rows, images)`` drops the rows that use an image
    that does not decode when the user gave ``skip_unreadable=true`` (and leaves them,
    reading nothing, otherwise: a bad file is then an error naming it when it is
    read). It counts the distinct skipped images in ``skipped_images`` (a run records
    the number), lists them in ``unreadable`` and warns once per call.
    ``find_unreadable`` and ``warn_skipped`` are its two halves, for data whose rows
    refer to images by index.
    """

    layout: ClassVar[str] = "the files it reads"
    """What DATA_ROOT holds, as errors show it: "DATA_ROOT/images/<class>/*.png and DATA_ROOT/train.csv"."""

    def __init__(self, data_root: str | None = None, image_size: Annotated[int, Range(8, 4096)] = 224,
                 skip_unreadable: bool = False):
        if data_root is None:
            raise DatasetError(f"{self.display_name()} reads files: give --data-root DIR laid out as {self.layout}")
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.display_name()}: data root {self.root} does not exist; expected {self.layout}")
        self.skip_unreadable = skip_unreadable
        self.skipped_images = 0
        self.unreadable: set[Path] = set()
        self._decodes: dict[Path, bool] = {}
        if image_size is not None:
            self.preprocessing = Preprocessing(image_size, IMAGENET_MEAN, IMAGENET_STD)
        self.read()

    def read(self) -> None:
        """Read the files under ``self.root`` (called at the end of ``__init__``); nothing by default."""

    def find_unreadable(self, paths: Iterable[Path]) -> list[Path]:
        """The paths among ``paths`` that do not decode, in order, each once; [] without decoding unless ``skip_unreadable``.

        Each distinct file is decoded once per dataset, whatever the number of calls;
        the bad ones join ``unreadable`` and ``skipped_images``.
        """
        if not self.skip_unreadable:
            return []
        bad = []
        for path in dict.fromkeys(paths):
            if path not in self._decodes:
                try:
                    read_image(path)
                    self._decodes[path] = True
                except DatasetError:
                    self._decodes[path] = False
            if not self._decodes[path]:
                bad.append(path)
        self.unreadable.update(bad)
        self.skipped_images = len(self.unreadable)
        return bad

    def warn_skipped(self, what: str, bad: Sequence[Path], rows: int) -> None:
        """One warning: ``what`` skipped ``bad`` images and the ``rows`` rows that use them (nothing when ``bad`` is empty)."""
        if bad:
            warnings.warn(f"{what}: skipped {len(bad)} unreadable image(s) and the {rows} row(s) that use them "
                          f"(first: {bad[0]})", stacklevel=3)

    def keep_readable(self, rows: Iterable[Row], images: Callable[[Row], Iterable[Path]] | None = None, *,
                      what: str | None = None) -> list[Row]:
        """The rows whose images all decode, in order (every row unless ``skip_unreadable``).

        ``images(row)`` lists a row's image paths (default: the row is one path);
        ``what`` names the rows in the warning (default: the dataset's name).
        """
        rows = list(rows)
        images = images or (lambda row: (row,))
        bad = self.find_unreadable(p for row in rows for p in images(row))
        if not bad:
            return rows
        unreadable = set(bad)
        kept = [row for row in rows if not any(p in unreadable for p in images(row))]
        self.warn_skipped(what or self.display_name(), bad, len(rows) - len(kept))
        return kept
