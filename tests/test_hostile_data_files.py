"""A hostile CSS data file (a pickle that would run code) is refused in one line, and nothing runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compose_retrieval import DatasetError, registry

from compose_retrieval_css_synthetic.cssfiles import DATA_FILE, image_path, write_data_file

from conftest import TINY_CLI_MODEL, assert_one_line_error, invoke


class RunsACommand:
    """Unpickling this calls os.system: what a hostile data file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsPython:
    """Unpickling this calls builtins.exec."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _save_object(root: Path, item) -> Path:
    """A .npy holding a 0-d object array of ``item``, as np.save writes the CSS data file."""
    root.mkdir(parents=True, exist_ok=True)
    array = np.empty((), dtype=object)
    array[()] = item
    with open(root / DATA_FILE, "wb") as f:
        np.save(f, array, allow_pickle=True)
    return root


def _save_stream(root: Path, stream: bytes) -> Path:
    """A valid .npy header for a 0-d object array, followed by a raw pickle stream."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / DATA_FILE, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(stream)
    return root


def _css(root: Path):
    return registry.create("dataset", "css", data_root=str(root), image_size=32)


def _refused(root: Path, marker: Path, *fragments: str) -> None:
    with pytest.raises(DatasetError) as info:
        _css(root)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in ("css:", str(root / DATA_FILE), "asks to load", "refusing to unpickle", *fragments):
        assert fragment in message, message
    assert not marker.exists()


def test_a_pickle_that_runs_a_command_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    root = _save_object(tmp_path / "css", {"train": RunsACommand(marker)})
    _refused(root, marker, f"{os.system.__module__}.system")


def test_a_pickle_that_runs_python_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    root = _save_object(tmp_path / "css", {"train": {"objects_img": [], "mods": RunsPython(marker)}})
    _refused(root, marker, "builtins.exec")


def test_a_crafted_pickle_stream_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    # protocol 0 by hand: GLOBAL os.system, a string argument, REDUCE
    root = _save_stream(tmp_path / "p0", b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    _refused(root, marker, "os.system")
    # protocol 4: a legit 0-d object array whose item is swapped for STACK_GLOBAL builtins.eval called on code
    array = np.empty((), dtype=object)
    array[()] = "PLACEHOLDER"
    code = f"open({str(marker)!r}, 'w').close()".encode()
    call = b"\x8c\x08builtins\x8c\x04eval\x93\x8c" + bytes([len(code)]) + code + b"\x85R"  # global, (code,), REDUCE
    stream = pickle.dumps(array, protocol=4).replace(b"\x8c\x0bPLACEHOLDER", call)
    _refused(_save_stream(tmp_path / "p4", stream), marker, "builtins.eval")


def test_a_hostile_file_through_the_cli_is_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    root = _save_object(tmp_path / "css", {"train": RunsACommand(marker), "test": {}})
    result = invoke("train", *TINY_CLI_MODEL, "--dataset", "css", "--data-root", root, "--run-dir", tmp_path / "run")
    assert_one_line_error(result, DATA_FILE, "asks to load", "system", "refusing to unpickle")
    assert not marker.exists() and not (tmp_path / "run" / "model.safetensors").exists()


def _record() -> dict:
    """Four images (2 and 3 duplicates), one query 0 -> 2; numpy arrays and scalars where a file may hold them."""
    obj = lambda c, pos: {"pos": pos, "color": c, "shape": "circle", "size": "large"}  # noqa: E731
    return {
        "objects_img": [[obj("red", np.array([0.5, 0.5]))], [obj("blue", (np.float64(0.25), np.float64(0.75)))],
                        [obj("green", np.array([0.5, 0.5], dtype=np.float32))], [obj("green", (0.5, 0.5))]],
        "mods": [{"from": np.array([0]), "to": [np.int64(2)], "to_str": "make red circle green"}],
        "labels": np.array([0, 1, 2, 2]),
    }


def _images(root: Path) -> Path:
    (root / "images").mkdir()
    for split in ("train", "test"):
        for i, colour in enumerate([(220, 30, 30), (30, 60, 220), (30, 190, 40), (30, 190, 40)]):
            Image.new("RGB", (32, 32), colour).save(image_path(root, split, i))
    return root


def _check_loaded(css) -> None:
    split = css.splits["test"]
    assert split.pairs == [(0, "make red circle green", 2)]
    assert float(split.objects[1][0]["pos"][1]) == 0.75 and isinstance(split.objects[0][0]["pos"], np.ndarray)
    protocol = css.protocol("3d")
    hits = (protocol.gallery_labels["label"] == protocol.query_labels["label"][0]).nonzero().flatten().tolist()
    assert hits == [2, 3]


def test_a_file_with_numpy_arrays_and_scalars_loads(tmp_path):
    root = tmp_path / "css"
    root.mkdir()
    write_data_file(root, {"train": _record(), "test": _record()})  # numpy 2 names numpy._core
    _check_loaded(_css(_images(root)))


def test_a_file_pickled_by_numpy_1_loads(tmp_path):
    """numpy 1.x's np.save pickles with protocol 3, naming numpy.core.multiarray and builtins.set."""
    array = np.empty((), dtype=object)
    array[()] = {"train": _record(), "test": _record(), "extra": {1, 2}}
    stream = pickle.dumps(array, protocol=3).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct\n" in stream and b"builtins\nset\n" in stream  # GLOBAL opcodes
    root = _images(_save_stream(tmp_path / "css", stream))
    _check_loaded(_css(root))
    # and np.load itself reads this file as the same dict (the header and stream are what numpy 1.x wrote)
    legit = np.load(root / DATA_FILE, allow_pickle=True).item()
    assert legit["extra"] == {1, 2}


def test_a_plain_numeric_npy_is_read_without_pickle(tmp_path):
    root = tmp_path / "css"
    root.mkdir()
    with open(root / DATA_FILE, "wb") as f:
        np.save(f, np.zeros((2, 3)), allow_pickle=False)
    with pytest.raises(DatasetError, match="does not hold a dict of splits"):
        _css(root)
    (root / DATA_FILE).write_bytes(b"\x93NUMPY\x01\x00")  # a header cut short
    with pytest.raises(DatasetError, match="cannot read"):
        _css(root)
