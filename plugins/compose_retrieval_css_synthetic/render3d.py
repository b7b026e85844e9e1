"""A 3D rendering style standing in for CSS's CLEVR renders: perspective, shading, shadows, occlusion.

numpy only, deterministic. The scene's 3 x 3 grid lies on a ground plane seen by a
pinhole camera from above and in front, as in CLEVR: rectangles become cubes, circles
spheres and triangles square pyramids, small or large, in the palette of the 2D
drawings, lit by one directional light (Lambert plus a highlight) and casting shadows
on the ground. Objects in different cells overlap on screen, so near ones hide far ones.

Like the 2D renderer, it ray-casts every possible object once per cell, at twice the
resolution (a "stamp": its colour and coverage, and the shadow it casts on the ground),
then renders a batch of scenes with array operations: the shadows of all objects darken
the ground, objects are painted from the far row to the near one, and 2 x 2 pixels
average into one. Shadows fall on the ground only, not on other objects.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .render import N_CODES, RGB
from .scenes import CELLS, SIZES, SHAPES

CAMERA = np.array([0.0, 8.0, 8.5])
LOOK_AT = np.array([0.0, 0.0, 0.4])
FIELD_OF_VIEW = math.radians(42)
LIGHT = np.array([-0.45, 1.0, 0.55]) / np.linalg.norm([-0.45, 1.0, 0.55])
SPACING = 2.3  # between cell centres on the ground
HALF_SIZE = (0.5, 0.85)  # small, large
GROUND = np.array([178.0, 176.0, 172.0])
SUPERSAMPLE = 2


def cell_centre(cell: int) -> tuple[float, float]:
    """(x, z) on the ground; the top row is the far one."""
    return (cell % 3 - 1) * SPACING, (cell // 3 - 1) * SPACING


def _camera_rays(size: int) -> np.ndarray:
    """(P, 3) unit directions of the pixel centres, row-major from the top-left."""
    forward = (LOOK_AT - CAMERA) / np.linalg.norm(LOOK_AT - CAMERA)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    s = size * SUPERSAMPLE
    scale = math.tan(FIELD_OF_VIEW / 2)
    coords = ((np.arange(s) + 0.5) / s * 2 - 1) * scale
    x, y = np.meshgrid(coords, -coords)
    rays = forward + x[..., None] * right + y[..., None] * up
    return (rays / np.linalg.norm(rays, axis=-1, keepdims=True)).reshape(-1, 3)


def _planes(shape: int, x: float, z: float, h: float) -> np.ndarray | None:
    """(K, 4) planes (normal, offset; inside where normal . p <= offset) of a cube or pyramid; None for a sphere."""
    if SHAPES[shape] == "circle":
        return None
    if SHAPES[shape] == "rectangle":  # a cube of half-size h resting on the ground
        normals = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
        centre = np.array([x, h, z])
        return np.concatenate([normals, (normals @ centre + h)[:, None]], axis=1)
    # a square pyramid: base 2h x 2h on the ground, apex 2h high
    apex = np.array([x, 2 * h, z])
    sides = np.array([[2, 1, 0], [-2, 1, 0], [0, 1, 2], [0, 1, -2]], dtype=float) / math.sqrt(5)
    planes = [np.concatenate([sides[i], [sides[i] @ apex]]) for i in range(4)]
    planes.append(np.array([0.0, -1.0, 0.0, 0.0]))
    return np.stack(planes)


def _intersect(origins: np.ndarray, rays: np.ndarray, shape: int, x: float, z: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each ray to the object (inf on a miss) and the surface normal there."""
    planes = _planes(shape, x, z, h)
    if planes is None:  # a sphere of radius h resting on the ground
        oc = origins - np.array([x, h, z])
        b = np.einsum("pi,pi->p", oc, rays) if oc.ndim == 2 else rays @ oc
        c = np.einsum("pi,pi->p", oc, oc) - h * h if oc.ndim == 2 else oc @ oc - h * h
        disc = b * b - c
        t = np.where(disc >= 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
        t = np.where(t > 1e-4, t, np.inf)
        points = origins + t[:, None] * rays
        return t, (points - np.array([x, h, z])) / h
    denom = rays @ planes[:, :3].T  # (P, K)
    num = planes[:, 3] - (origins @ planes[:, :3].T if origins.ndim == 2 else planes[:, :3] @ origins)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = num / denom
    entering = np.where(denom < 0, bound, -np.inf)
    exiting = np.where(denom > 0, bound, np.inf)
    outside_parallel = ((denom == 0) & (num < 0)).any(axis=1)
    t_in, t_out = entering.max(axis=1), exiting.min(axis=1)
    hit = (t_in <= t_out) & (t_in > 1e-4) & ~outside_parallel
    return np.where(hit, t_in, np.inf), planes[entering.argmax(axis=1), :3]


def _box(mask: np.ndarray, s: int) -> tuple[slice, slice]:
    """The bounding box of a (P,) mask over an s x s image (an empty slice when the mask is empty)."""
    rows, cols = np.nonzero(mask.reshape(s, s))
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


@lru_cache(maxsize=4)
def _stamps(size: int) -> tuple[np.ndarray, list, list]:
    """The bare ground, and for every cell its object stamps and ground-shadow stamps, cropped to where they fall.

    Object stamps: (window, colour (N_CODES + 1, h, w, 3) uint8, cover (N_CODES + 1, h, w) bool);
    shadow stamps: (window, (N_CODES + 1, h, w) bool). Index 0 is the empty cell.
    """
    s = size * SUPERSAMPLE
    rays = _camera_rays(size)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(rays[:, 1] < 0, -CAMERA[1] / rays[:, 1], np.inf)
    on_ground = np.isfinite(t_ground)
    ground_points = CAMERA + np.where(on_ground, t_ground, 0)[:, None] * rays
    fog = np.exp(-np.maximum(np.where(on_ground, t_ground, 99.0) - 9.0, 0) / 25.0)[:, None]
    ground = np.round(GROUND * (0.75 + 0.25 * fog)).reshape(s, s, 3).astype(np.uint8)
    light_origins = ground_points + np.array([0.0, 1e-3, 0.0])
    light_rays = np.broadcast_to(LIGHT, light_origins.shape)
    objects, shadows = [], []
    for cell in range(CELLS):
        x, z = cell_centre(cell)
        colour = np.zeros((N_CODES + 1, len(rays), 3), dtype=np.uint8)
        cover = np.zeros((N_CODES + 1, len(rays)), dtype=bool)
        shadow = np.zeros((N_CODES + 1, len(rays)), dtype=bool)
        for code in range(N_CODES):
            colour_index, shape_size = divmod(code, len(SHAPES) * len(SIZES))
            shape, size_index = divmod(shape_size, len(SIZES))
            h = HALF_SIZE[size_index]
            t, normal = _intersect(CAMERA, rays, shape, x, z, h)
            hit = np.isfinite(t)
            normal = np.where(hit[:, None], normal, 0.0)
            lambert = np.clip(normal @ LIGHT, 0, 1)
            reflect = 2 * (normal @ LIGHT)[:, None] * normal - LIGHT
            highlight = np.clip(np.einsum("pi,pi->p", reflect, -rays), 0, 1) ** 24
            shaded = RGB[colour_index] * (0.32 + 0.68 * lambert)[:, None] + 90 * highlight[:, None]
            colour[code + 1] = np.clip(shaded, 0, 255).astype(np.uint8)
            cover[code + 1] = hit
            shadow_t, _ = _intersect(light_origins, light_rays, shape, x, z, h)
            shadow[code + 1] = np.isfinite(shadow_t) & on_ground
        rows, cols = _box(cover.any(axis=0), s)
        objects.append(((rows, cols), colour.reshape(-1, s, s, 3)[:, rows, cols], cover.reshape(-1, s, s)[:, rows, cols]))
        rows, cols = _box(shadow.any(axis=0), s)
        shadows.append(((rows, cols), shadow.reshape(-1, s, s)[:, rows, cols]))
    return ground, objects, shadows


def render_3d(scenes: np.ndarray, size: int = 64, chunk: int = 512) -> np.ndarray:
    """(N, 9) scenes -> (N, 3, size, size) uint8 renders.

    Shadows first, then objects from the far row to the near one (a painter's
    algorithm: cells of one row never overlap on screen, a nearer row covers a farther one).
    """
    ground, objects, shadows = _stamps(size)
    dark_ground = np.round(ground * 0.58).astype(np.uint8)
    scenes = np.asarray(scenes)
    out = np.empty((len(scenes), 3, size, size), dtype=np.uint8)
    for start in range(0, len(scenes), chunk):
        codes = scenes[start : start + chunk] + 1  # 0: an empty cell
        n = len(codes)
        canvas = np.repeat(ground[None], n, axis=0)  # (n, s, s, 3) uint8
        for cell, ((rows, cols), stamp) in enumerate(shadows):  # overlapping shadows darken once
            canvas[:, rows, cols] = np.where(stamp[codes[:, cell]][..., None], dark_ground[rows, cols], canvas[:, rows, cols])
        for cell in range(CELLS):  # row 0 (the far one) first
            (rows, cols), colour, cover = objects[cell]
            window = canvas[:, rows, cols]
            canvas[:, rows, cols] = np.where(cover[codes[:, cell]][..., None], colour[codes[:, cell]], window)
        total = sum(canvas[:, i::SUPERSAMPLE, j::SUPERSAMPLE].astype(np.uint16) for i in range(SUPERSAMPLE) for j in range(SUPERSAMPLE))
        out[start : start + n] = ((total + SUPERSAMPLE**2 // 2) // SUPERSAMPLE**2).astype(np.uint8).transpose(0, 3, 1, 2)
    return out
