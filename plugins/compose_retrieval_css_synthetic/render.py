"""Flat 2D drawings of scenes: a white canvas with coloured rectangles, circles and triangles.

Follows google/tirg's CSS rendering: a 64 x 64 canvas, an object of half-size 4 px (8 px
when large) centred at its grid position, one RGB colour per colour name. Objects sit
on a fixed grid and never overlap, so each cell's window is drawn once for every
possible object (a "stamp", computed with array operations) and a scene is rendered
by gathering the stamps of its objects: no per-pixel or per-scene Python loop.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .scenes import CELLS, COLORS, SHAPES, SIZES

RGB = np.array(
    [(87, 87, 87), (244, 35, 35), (42, 75, 215), (29, 205, 20), (129, 74, 25), (129, 38, 192), (41, 208, 208), (255, 238, 51)],
    dtype=np.uint8,
)
GRID = (0.2, 0.5, 0.8)  # cell centres as fractions of the canvas
N_CODES = len(COLORS) * len(SHAPES) * len(SIZES)


def _cell_window(cell: int, size: int) -> tuple[slice, slice]:
    reach = math.ceil(8 * size / 64) + 1
    cy, cx = round(GRID[cell // 3] * size), round(GRID[cell % 3] * size)
    return slice(max(cy - reach, 0), min(cy + reach, size)), slice(max(cx - reach, 0), min(cx + reach, size))


def _masks(dy: np.ndarray, dx: np.ndarray, shape: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Where an object covers a pixel, from the pixel centre's offset (dy, dx) to the object's centre."""
    rectangle = np.maximum(abs(dy), abs(dx)) <= half
    circle = dy * dy + dx * dx <= half * half
    triangle = (abs(dy) <= half) & (2 * abs(dx) <= dy + half)  # apex up, base at the bottom
    return np.where(shape == 0, rectangle, np.where(shape == 1, circle, triangle))


def _stamps(cell: int, size: int) -> np.ndarray:
    """(1 + N_CODES, h, w, 3) uint8: the cell's window empty (index 0) and holding each object code."""
    rows, cols = _cell_window(cell, size)
    yy, xx = np.mgrid[rows, cols].astype(np.float64) + 0.5
    dy = (yy - GRID[cell // 3] * size)[None]
    dx = (xx - GRID[cell % 3] * size)[None]
    codes = np.arange(N_CODES)
    size_idx = codes % len(SIZES)
    shape = ((codes // len(SIZES)) % len(SHAPES))[:, None, None]
    color = codes // (len(SIZES) * len(SHAPES))
    half = np.where(size_idx == 1, 8.0, 4.0)[:, None, None] * size / 64
    mask = _masks(dy, dx, shape, half)
    stamps = np.full((1 + N_CODES, *mask.shape[1:], 3), 255, dtype=np.uint8)
    stamps[1:] = np.where(mask[..., None], RGB[color][:, None, None, :], stamps[1:])
    return stamps


def render_2d(scenes: np.ndarray, size: int = 64) -> np.ndarray:
    """(N, 9) scenes -> (N, 3, size, size) uint8 images."""
    scenes = np.asarray(scenes)
    canvas = np.full((len(scenes), size, size, 3), 255, dtype=np.uint8)
    for cell in range(CELLS):
        rows, cols = _cell_window(cell, size)
        canvas[:, rows, cols] = _stamps(cell, size)[scenes[:, cell] + 1]
    return np.ascontiguousarray(canvas.transpose(0, 3, 1, 2))


def render_objects_2d(images: Sequence[Sequence[tuple[float, float, int, int, int]]], size: int = 64) -> np.ndarray:
    """Objects anywhere on the canvas -> (N, 3, size, size) uint8 drawings, in the same style.

    An object is (y, x, colour, shape, size) with (y, x) its centre as fractions of the
    canvas (CSS's ``pos``) and the other three indices into COLORS, SHAPES, SIZES; later
    objects are drawn over earlier ones. One array operation per object.
    """
    canvas = np.full((len(images), size, size, 3), 255, dtype=np.uint8)
    centres = np.arange(size) + 0.5
    for n, objects in enumerate(images):
        for y, x, color, shape, size_idx in objects:
            half = (8.0 if size_idx == 1 else 4.0) * size / 64
            dy, dx = (centres - y * size)[:, None], (centres - x * size)[None, :]
            mask = _masks(dy, dx, np.asarray(shape), np.asarray(half))
            canvas[n][mask] = RGB[color]
    return np.ascontiguousarray(canvas.transpose(0, 3, 1, 2))
