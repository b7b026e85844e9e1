"""Scenes and modifications in the style of CSS (Vo et al., built with CLEVR tools).

A scene is an int array of 9 grid cells (row-major, top-left first); a cell holds -1
(empty) or an object code ``(color * 3 + shape) * 2 + size``. A modification adds,
removes or changes one object and is described by a short text that names the object
by colour and shape, adding its position only when that is ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("rectangle", "circle", "triangle")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
CELLS = 9
EMPTY = -1


def encode(color: int, shape: int, size: int) -> int:
    return (color * len(SHAPES) + shape) * len(SIZES) + size


def decode(code: int) -> tuple[int, int, int]:
    color_shape, size = divmod(int(code), len(SIZES))
    color, shape = divmod(color_shape, len(SHAPES))
    return color, shape, size


def position(cell: int) -> str:
    return f"{ROWS[cell // 3]}-{COLS[cell % 3]}"


@dataclass
class Modification:
    source: np.ndarray
    target: np.ndarray
    text: str


def random_scene(rng: np.random.Generator, min_objects: int = 2, max_objects: int = 5) -> np.ndarray:
    scene = np.full(CELLS, EMPTY, dtype=np.int64)
    n = rng.integers(min_objects, max_objects + 1)
    cells = rng.choice(CELLS, size=n, replace=False)
    scene[cells] = [encode(rng.integers(len(COLORS)), rng.integers(len(SHAPES)), rng.integers(len(SIZES))) for _ in cells]
    return scene


def _reference(scene: np.ndarray, cell: int) -> str:
    """The shortest description that picks out the object in ``cell``: colour and shape, plus position if needed."""
    color, shape, _ = decode(scene[cell])
    name = f"{COLORS[color]} {SHAPES[shape]}"
    same = sum(1 for c in range(CELLS) if scene[c] != EMPTY and decode(scene[c])[:2] == (color, shape))
    return name if same == 1 else f"{name} at {position(cell)}"


def random_modification(rng: np.random.Generator, scene: np.ndarray) -> Modification:
    """One random add / remove / change-colour / change-shape / change-size of ``scene``."""
    occupied = np.flatnonzero(scene != EMPTY)
    empty = np.flatnonzero(scene == EMPTY)
    kinds = ["color", "shape", "size"]
    if len(empty):
        kinds.append("add")
    if len(occupied) > 1:
        kinds.append("remove")
    kind = kinds[rng.integers(len(kinds))]
    target = scene.copy()
    if kind == "add":
        cell = int(rng.choice(empty))
        color, shape, size = rng.integers(len(COLORS)), rng.integers(len(SHAPES)), rng.integers(len(SIZES))
        target[cell] = encode(color, shape, size)
        text = f"add {SIZES[size]} {COLORS[color]} {SHAPES[shape]} to {position(cell)}"
        return Modification(scene, target, text)
    cell = int(rng.choice(occupied))
    ref = _reference(scene, cell)
    color, shape, size = decode(scene[cell])
    if kind == "remove":
        target[cell] = EMPTY
        text = f"remove {ref}"
    elif kind == "color":
        new = (color + 1 + rng.integers(len(COLORS) - 1)) % len(COLORS)
        target[cell] = encode(new, shape, size)
        text = f"make {ref} {COLORS[new]}"
    elif kind == "shape":
        new = (shape + 1 + rng.integers(len(SHAPES) - 1)) % len(SHAPES)
        target[cell] = encode(color, new, size)
        text = f"turn {ref} into a {SHAPES[new]}"
    else:
        target[cell] = encode(color, shape, 1 - size)
        text = f"make {ref} {SIZES[1 - size]}"
    return Modification(scene, target, text)


def scene_key(scene: np.ndarray) -> bytes:
    """A hashable key of a scene: equal scenes (duplicates) share it."""
    return np.asarray(scene, dtype=np.int8).tobytes()
