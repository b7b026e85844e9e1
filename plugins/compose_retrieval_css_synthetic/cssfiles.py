"""The original CSS file layout (google/tirg): read it, and write css-synthetic in it.

    DATA_ROOT/css_toy_dataset_novel2_small.dup.npy   a pickled dict, one entry a split
    DATA_ROOT/images/css_<split>_<idx:06d>.png         one rendering per image id

``data[split]`` holds ``objects_img`` (a list of objects per image; an object is a dict
with ``pos`` (y, x) as fractions of the canvas, ``color``, ``shape``, ``size``), ``mods``
(a list of {"from": [image ids], "to": [image ids], "to_str": text}) and optionally
``labels`` (image id -> scene label; duplicates of a scene share one).

The file is a pickle, which could run code when loaded; it is read without running any:
the unpickler rebuilds only what the format holds (containers, strings, numbers, numpy
arrays, dtypes and scalars) and refuses a file that names anything else.
"""

from __future__ import annotations

import os
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from compose_retrieval.errors import DatasetError

from .render import GRID
from .scenes import CELLS, COLORS, EMPTY, SHAPES, SIZES, decode

try:
    from numpy._core import multiarray as _multiarray  # numpy 2
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

DATA_FILE = "css_toy_dataset_novel2_small.dup.npy"
LAYOUT = f"DATA_ROOT/{DATA_FILE} and DATA_ROOT/images/css_<split>_<idx:06d>.png (write one with `compose-retrieval data make-css --out DIR`)"


def image_path(root: str | os.PathLike, split: str, index: int) -> Path:
    return Path(root) / "images" / f"css_{split}_{index:06d}.png"


def scene_objects(scene: np.ndarray) -> list[dict[str, Any]]:
    """A css-synthetic scene (9 cell codes) as CSS objects."""
    objects = []
    for cell in range(CELLS):
        if scene[cell] != EMPTY:
            color, shape, size = decode(scene[cell])
            objects.append({"pos": (GRID[cell // 3], GRID[cell % 3]), "color": COLORS[color], "shape": SHAPES[shape], "size": SIZES[size]})
    return objects


def split_record(scenes: np.ndarray, sources: list[int], texts: list[str], targets: list[int], labels: list) -> dict[str, Any]:
    """One split in the CSS format: modifications grouped by their text, as in the original file."""
    grouped: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for s, t, text in zip(sources, targets, texts):
        grouped[text][0].append(int(s))
        grouped[text][1].append(int(t))
    label_ids: dict = {}
    return {
        "objects_img": [scene_objects(scene) for scene in scenes],
        "mods": [{"from": f, "to": t, "to_str": text} for text, (f, t) in grouped.items()],
        "labels": [label_ids.setdefault(key, len(label_ids)) for key in labels],
    }


def write_data_file(root: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write the pickled dict as np.save does for the original file (a 0-d object array)."""
    from compose_retrieval.checkpoint import atomic_write

    path = Path(root) / DATA_FILE
    array = np.empty((), dtype=object)
    array[()] = data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, array, allow_pickle=True)

    atomic_write(path, write)
    return path


# the globals a CSS data file's pickle names (numpy 1.x pickles numpy.core, numpy 2 numpy._core;
# Python 2 pickles __builtin__): nothing else is ever looked up, so nothing else can be called
_ALLOWED = {
    **{(m, n): getattr(_multiarray, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(m, t.__name__): t for m in ("builtins", "__builtin__") for t in (set, frozenset, complex)},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="ASCII")  # np.load's default
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DatasetError(f"css: {self.path} asks to load {module}.{name}, which a CSS data file never holds; "
                               "refusing to unpickle it (it could run code)")
        return _ALLOWED[module, name]


def _load(path: Path) -> Any:
    """The array in a .npy file; an object array is unpickled with :class:`_Unpickler`."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            _, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        if dtype.hasobject:
            return _Unpickler(f, path).load()
    return np.load(path, allow_pickle=False)


def read_data_file(root: str | os.PathLike) -> dict[str, Any]:
    """The CSS data dict, unpickled without running code: a file naming anything but numpy arrays and plain data is refused."""
    path = Path(root) / DATA_FILE
    if not Path(root).is_dir():
        raise DatasetError(f"css: data root {root} does not exist; expected {LAYOUT}")
    if not path.is_file():
        raise DatasetError(f"css: {path} not found; expected {LAYOUT}")
    try:
        data = _load(path)
        data = data.item() if isinstance(data, np.ndarray) and data.shape == () else None
    except DatasetError:
        raise
    except Exception as exc:  # a truncated or foreign file: numpy and pickle raise many kinds
        raise DatasetError(f"css: cannot read {path} ({type(exc).__name__}: {exc}); expected the pickled dict of google/tirg") from None
    if not isinstance(data, dict):
        raise DatasetError(f"css: {path} does not hold a dict of splits; expected the pickled dict of google/tirg")
    return data


def check_split(data: dict[str, Any], split: str, root: str | os.PathLike) -> dict[str, Any]:
    if split not in data:
        raise DatasetError(f"css: {Path(root) / DATA_FILE} has no split {split!r} (it has {', '.join(map(str, data)) or 'none'})")
    record = data[split]
    for key in ("objects_img", "mods"):
        if key not in record:
            raise DatasetError(f"css: split {split!r} of {Path(root) / DATA_FILE} has no {key!r}")
    if not record["mods"]:
        raise DatasetError(f"css: split {split!r} has no modifications, so no {'training pairs' if split == 'train' else 'queries'}")
    return record


def write_css(dataset: Any, out: str | os.PathLike) -> Path:
    """Write a css-synthetic dataset in the original layout; the folder appears whole or not at all."""
    import shutil
    import tempfile

    from PIL import Image

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} exists and is not an empty folder; choose a new folder for the CSS files")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        data = {}
        for name, split in dataset.splits.items():
            data[name] = split_record(split.scenes, split.sources, split.texts, split.targets, split.labels)
            for i, image in enumerate(dataset.images(name).images.numpy()):
                Image.fromarray(image.transpose(1, 2, 0)).save(image_path(tmp, name, i))
        write_data_file(tmp, data)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
