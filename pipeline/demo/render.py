"""Pixels of the demo images: shape outlines, anti-aliased coverage, varied backgrounds.

Coordinates are continuous pixel coordinates of the saved image: pixel (i, j) spans
[i, i+1) x [j, j+1), so a box [x1, y1, x2, y2] is exactly what torchvision.ops.roi_align reads.
"""
from __future__ import annotations

import colorsys
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down: smooth edges, exact-ish area


def _regular(points: int, radius_of: Callable[[int], float], start: float = -np.pi / 2) -> np.ndarray:
    angles = start + np.arange(points) * 2 * np.pi / points
    radii = np.array([radius_of(k) for k in range(points)])
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(arm: float) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                     (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=float)


# Unit outlines inside [-1, 1]^2, (k, 2) vertices; every shape is a polygon, so boxes and pixels agree.
UNIT_OUTLINES: dict[str, np.ndarray] = {
    "circle": _regular(64, lambda k: 1.0),
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float) * 0.9,
    "triangle": np.array([(0, -1), (1, 0.85), (-1, 0.85)], dtype=float),
    "star": _regular(10, lambda k: 1.0 if k % 2 == 0 else 0.45),
    "cross": _cross(0.34),
    "diamond": np.array([(0, -1), (0.68, 0), (0, 1), (-0.68, 0)], dtype=float),
}


def outline(shape: str, centre: tuple[float, float], extent: float, angle_deg: float) -> np.ndarray:
    """Vertices `(k, 2)` of `shape` scaled to `extent` pixels across, rotated, centred at `centre`."""
    theta = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return UNIT_OUTLINES[shape] @ rotation.T * (extent / 2) + np.asarray(centre)


def bounding_box(vertices: np.ndarray) -> tuple[float, float, float, float]:
    """Tight `[x1, y1, x2, y2]` of a polygon, rounded to 1/100 pixel for stable JSON."""
    x1, y1 = vertices.min(axis=0)
    x2, y2 = vertices.max(axis=0)
    return tuple(round(float(v), 2) for v in (x1, y1, x2, y2))


def coverage(vertices: np.ndarray, size: int) -> np.ndarray:
    """Fraction `(size, size)` float32 of each pixel covered by the polygon."""
    x0, y0 = np.maximum(np.floor(vertices.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(vertices.max(axis=0)).astype(int), size)
    canvas = Image.new("L", (int(x1 - x0) * SUPERSAMPLE, int(y1 - y0) * SUPERSAMPLE), 0)
    # PIL fills the sub-pixel whose index point lies inside; its centre is at (k + 0.5) / SUPERSAMPLE.
    points = (vertices - (x0, y0)) * SUPERSAMPLE - 0.5
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=255)
    cover = np.zeros((size, size), dtype=np.float32)
    cover[y0:y1, x0:x1] = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
    return cover


def _muted_rgb(rng: np.random.Generator) -> np.ndarray:
    """A dull colour (low saturation, mid-dark value) that no object colour is close to."""
    hue, saturation, value = rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.22, 0.58)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255


def _blend(rng: np.random.Generator, weight: np.ndarray) -> np.ndarray:
    """Mix two muted colours with per-pixel `weight` `(H, W)` in [0, 1] -> `(H, W, 3)`."""
    first, second = _muted_rgb(rng), _muted_rgb(rng)
    return first * (1 - weight[..., None]) + second * weight[..., None]


def _solid(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.broadcast_to(_muted_rgb(rng), (size, size, 3)).copy()


def _ramp(rng: np.random.Generator, size: int) -> np.ndarray:
    """Coordinate along a random direction, in [0, 1]."""
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramp = xs * np.cos(theta) + ys * np.sin(theta)
    return (ramp - ramp.min()) / (ramp.max() - ramp.min())


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    return _blend(rng, _ramp(rng, size))


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    periods = rng.uniform(3, 9)
    return _blend(rng, 0.5 + 0.5 * np.sin(2 * np.pi * periods * _ramp(rng, size)))


def _clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth blotches: a coarse random grid upsampled with cubic interpolation."""
    cells = int(rng.integers(3, 9))
    coarse = rng.random((cells, cells)).astype(np.float32)
    return _blend(rng, np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1))


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fine texture like paper or sand."""
    return _blend(rng, rng.random((size, size)).astype(np.float32) * rng.uniform(0.3, 1.0))


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "solid": _solid, "gradient": _gradient, "stripes": _stripes, "clouds": _clouds, "grain": _grain,
}


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background `(size, size, 3)` float32 in 0-255; never described in captions."""
    kinds = sorted(BACKGROUNDS)
    return BACKGROUNDS[kinds[int(rng.integers(len(kinds)))]](rng, size).astype(np.float32)


def compose(canvas: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], noise: np.ndarray) -> np.ndarray:
    """Paint `(coverage (H, W), rgb (3,))` layers back to front over `canvas`, add `noise`; uint8 `(H, W, 3)`."""
    image = canvas.copy()
    for alpha, rgb in layers:
        image = image * (1 - alpha[..., None]) + rgb * alpha[..., None]
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)
