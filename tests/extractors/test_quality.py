"""Agreement figures between two runs: one-to-one box matching at IoU >= 0.9 and feature cosines."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from extractors.quality import compare_runs, cosines, match_boxes
from extractors.regions import DetectorOutput


def _output(boxes, features) -> DetectorOutput:
    k = len(boxes)
    zeros = np.zeros(k, dtype=np.float32)
    return DetectorOutput(np.asarray(boxes, np.float32), np.asarray(features, np.float32), zeros.astype(np.int64),
                          zeros, zeros.astype(np.int64), zeros)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_matching_is_one_to_one_and_as_large_as_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        base = rng.uniform(0, 100, (5, 2))
        reference = np.concatenate([base, base + rng.uniform(20, 60, (5, 2))], axis=1)
        other = reference[rng.permutation(5)[:4]] + rng.normal(0, 1.0, (4, 4))
        pairs = match_boxes(reference, other)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        assert all(_iou(reference[i], other[j]) >= 0.9 for i, j in pairs)
        best = max(len(chosen) for size in range(5) for chosen in itertools.combinations(
            [(i, j) for i in range(5) for j in range(4) if _iou(reference[i], other[j]) >= 0.9], size)
            if len({i for i, _ in chosen}) == len({j for _, j in chosen}) == len(chosen))
        assert len(pairs) == best


def test_a_box_moved_below_iou_09_is_not_matched() -> None:
    reference = np.array([[0, 0, 100, 100]], np.float32)
    assert match_boxes(reference, reference + [6, 0, 6, 0]) == []  # IoU 0.887
    assert match_boxes(reference, reference + [4, 0, 4, 0]) == [(0, 0)]  # IoU 0.923


def test_identical_runs_agree_fully_and_cosines_see_the_change() -> None:
    rng = np.random.default_rng(1)
    boxes = np.array([[0, 0, 50, 50], [10, 10, 90, 80], [40, 0, 99, 30]], np.float32)
    features = rng.normal(size=(3, 16))
    same = compare_runs([_output(boxes, features)], [_output(boxes[::-1], features[::-1])])
    assert (same.boxes, same.matched) == (3, 3) and same.min_cosine == pytest.approx(1.0)
    changed = compare_runs([_output(boxes, features)], [_output(boxes[:2], -features[:2])])
    assert changed.matched_fraction == pytest.approx(2 / 3) and changed.mean_cosine == pytest.approx(-1.0)
    np.testing.assert_allclose(cosines(features, 2 * features), 1.0)
