"""What each demo image contains: 1-4 objects with a colour, shape, size and place.

An image's `description` is the multiset of its (colour, shape) pairs: every caption names
all of them, so descriptions unique within a split make every caption identify its image.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from pipeline.demo.render import UNIT_OUTLINES, bounding_box, coverage, outline

# Strong, well separated colours (0-255 RGB); backgrounds are muted so none of them blends in.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 35), "orange": (250, 135, 20), "yellow": (245, 220, 35), "green": (35, 175, 55),
    "cyan": (30, 205, 215), "blue": (40, 70, 225), "purple": (150, 50, 200), "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = tuple(UNIT_OUTLINES)
# Object extent (pixels across) as a fraction of the image side; the gap makes size visible.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.17, 0.22), "large": (0.30, 0.38)}
MAX_TILT_DEG = 15.0  # small enough that a square never looks like a diamond
PLACEMENT_TRIES = 60
Description = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SceneObject:
    """One painted object; `box` is `[x1, y1, x2, y2]` in saved-image pixels."""

    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]
    rgb: tuple[float, float, float]

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass(frozen=True)
class Scene:
    """Objects back to front, with their pixel coverage `(H, W)` each, same order."""

    objects: tuple[SceneObject, ...]
    coverages: tuple[np.ndarray, ...]


def sample_description(rng: np.random.Generator, count_weights: tuple[float, ...]) -> Description:
    """Distinct (colour, shape) pairs for one image; their count drawn from `count_weights`."""
    weights = np.asarray(count_weights, dtype=float)
    count = 1 + int(rng.choice(len(weights), p=weights / weights.sum()))
    colors, shapes = sorted(PALETTE), list(SHAPES)
    flat = rng.choice(len(colors) * len(shapes), size=count, replace=False)
    return tuple(sorted((colors[int(i) // len(shapes)], shapes[int(i) % len(shapes)]) for i in flat))


def _jittered_rgb(rng: np.random.Generator, color: str) -> tuple[float, float, float]:
    """The palette colour, a little darker or lighter and shifted in hue, as paint varies."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in PALETTE[color]))
    hue = (hue + rng.uniform(-0.015, 0.015)) % 1.0
    value = min(1.0, value * rng.uniform(0.85, 1.05))
    return tuple(round(255 * c, 2) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _place(rng: np.random.Generator, color: str, shape: str, image_size: int) -> tuple[SceneObject, np.ndarray]:
    """Random size, tilt and position that keep the whole object inside the image."""
    size = sorted(SIZE_RANGES)[int(rng.integers(len(SIZE_RANGES)))]
    extent = rng.uniform(*SIZE_RANGES[size]) * image_size
    local = outline(shape, (0.0, 0.0), extent, rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG))
    low, high = 1 - local.min(axis=0), image_size - 1 - local.max(axis=0)
    vertices = local + rng.uniform(low, high)
    obj = SceneObject(shape, color, size, bounding_box(vertices), _jittered_rgb(rng, color))
    return obj, coverage(vertices, image_size)


def _still_visible(covers: list[np.ndarray], visible: list[np.ndarray], new: np.ndarray,
                   fraction: float) -> list[np.ndarray] | None:
    """Visible parts after painting `new` on top, or None if any object would be hidden too much."""
    updated = [v * (1 - new) for v in visible]
    if all(u.sum() >= fraction * c.sum() for u, c in zip(updated, covers)):
        return updated
    return None


def layout(rng: np.random.Generator, description: Description, image_size: int, min_visible: float) -> Scene | None:
    """Place the objects in random paint order with limited occlusion; None if they do not fit."""
    objects, covers, visible = [], [], []
    for index in rng.permutation(len(description)):
        color, shape = description[int(index)]
        for _ in range(PLACEMENT_TRIES):
            obj, cover = _place(rng, color, shape, image_size)
            updated = _still_visible(covers, visible, cover, min_visible)
            if updated is not None:
                break
        else:
            return None
        objects.append(obj)
        covers.append(cover)
        visible = updated + [cover]
    return Scene(tuple(objects), tuple(covers))
