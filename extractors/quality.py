"""How far a faster or reduced-precision run's regions are from a float32 reference run on the same images.

Boxes are matched one to one, greedily by IoU, at IoU >= 0.9 (a region "survives" the change when its box
is still there); for each matched pair the features' cosine similarity tells whether the region still
means the same. `compare_runs` sums this over images; the benchmarks print it beside every speed figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from extractors.regions import DetectorOutput

MATCH_IOU = 0.9


def match_boxes(reference: np.ndarray, other: np.ndarray, min_iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """Pairs (i, j): reference box i matched to other box j, one to one, highest IoU first, IoU >= min_iou."""
    if not len(reference) or not len(other):
        return []
    iou = box_iou(torch.from_numpy(np.asarray(reference, np.float64)),
                  torch.from_numpy(np.asarray(other, np.float64))).numpy()
    pairs, used_i, used_j = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < min_iou:
            break
        if i not in used_i and j not in used_j:
            pairs.append((int(i), int(j)))
            used_i.add(i)
            used_j.add(j)
    return sorted(pairs)


def cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (K, D) feature arrays (1 for two zero rows)."""
    a, b = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    dots, norms = (a * b).sum(axis=1), np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 1.0)


@dataclass(frozen=True)
class Agreement:
    """Over all images: reference boxes, how many were matched, and the matched pairs' feature cosines."""

    boxes: int
    matched: int
    cosine: tuple[float, ...]

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.boxes if self.boxes else 1.0

    @property
    def mean_cosine(self) -> float:
        return float(np.mean(self.cosine)) if self.cosine else float("nan")

    @property
    def min_cosine(self) -> float:
        return float(np.min(self.cosine)) if self.cosine else float("nan")

    def __str__(self) -> str:
        return (f"boxes matched {100 * self.matched_fraction:5.1f}% ({self.matched}/{self.boxes}), "
                f"feature cosine mean {self.mean_cosine:.5f} min {self.min_cosine:.5f}")


def compare_runs(reference: Sequence[DetectorOutput], other: Sequence[DetectorOutput],
                 min_iou: float = MATCH_IOU) -> Agreement:
    """Agreement of `other` with `reference`, image by image (same images, same order)."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference images but {len(other)} to compare")
    boxes, matched, values = 0, 0, []
    for ref, out in zip(reference, other):
        pairs = match_boxes(ref.boxes, out.boxes, min_iou)
        boxes, matched = boxes + len(ref.boxes), matched + len(pairs)
        if pairs:
            rows, cols = map(list, zip(*pairs))
            values.extend(cosines(ref.features[rows], out.features[cols]).tolist())
    return Agreement(boxes, matched, tuple(values))
