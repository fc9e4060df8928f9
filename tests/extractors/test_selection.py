"""Region selection against a handcrafted case and against the reference loop (brute force)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors.selection import max_confidence_after_nms, select_regions


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Boxes 0 and 1 overlap (IoU ~0.82); 2 and 3 stand alone. Columns: background, cat, dog.
BOXES = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [100, 0, 120, 30]], dtype=torch.float32)
PROBS = torch.tensor([
    [0.1, 0.6, 0.3],   # best cat; survives for both classes
    [0.1, 0.5, 0.4],   # suppressed by box 0 for cat; leads dog and suppresses box 0 there
    [0.8, 0.15, 0.05],
    [0.65, 0.1, 0.25],
])


def test_max_conf_follows_per_class_nms_by_hand():
    # cat: box 0 (0.6) suppresses box 1; dog: box 1 (0.4) suppresses box 0.
    max_conf = max_confidence_after_nms(BOXES, PROBS, 0.3)
    np.testing.assert_allclose(max_conf.numpy(), [0.6, 0.4, 0.15, 0.25], rtol=1e-6)


def test_in_range_keeps_thresholded_boxes_in_proposal_order():
    keep = select_regions(BOXES, PROBS, conf_thresh=0.2, nms_thresh=0.3, min_boxes=1, max_boxes=4)
    assert keep.tolist() == [0, 1, 3]


def test_too_few_takes_most_confident_first():
    keep = select_regions(BOXES, PROBS, conf_thresh=0.5, nms_thresh=0.3, min_boxes=3, max_boxes=4)
    assert keep.tolist() == [0, 1, 3]  # 0.6, 0.4, 0.25


def test_too_many_takes_most_confident_first():
    keep = select_regions(BOXES, PROBS, conf_thresh=0.1, nms_thresh=0.3, min_boxes=1, max_boxes=2)
    assert keep.tolist() == [0, 1]


def caffe_nms(dets: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """The reference's py_cpu_nms (inclusive +1 areas), written out as the brute force."""
    x1, y1, x2, y2 = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= thresh]
    return keep


def test_matches_reference_loop_on_random_proposals():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 200, (60, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 80, (60, 2))], axis=1).astype(np.float32)
    logits = rng.normal(0, 3, (60, 21))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    expected = np.zeros(60, dtype=np.float32)
    for cls in range(1, 21):
        keep = caffe_nms(boxes, probs[:, cls], 0.3)
        expected[keep] = np.where(probs[keep, cls] > expected[keep], probs[keep, cls], expected[keep])
    actual = max_confidence_after_nms(torch.from_numpy(boxes), torch.from_numpy(probs), 0.3)
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-6)


def test_no_proposals_gives_no_regions():
    keep = select_regions(torch.zeros((0, 4)), torch.zeros((0, 3)), conf_thresh=0.2, nms_thresh=0.3, min_boxes=2, max_boxes=4)
    assert keep.numel() == 0
