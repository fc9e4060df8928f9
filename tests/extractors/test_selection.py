"""Region selection against handcrafted cases and against the reference loops (references.py).

caffe: bottom-up-attention `tools/generate_tsv.py` lines 84-95 (a loop over classes 1..C of
`lib/nms/py_cpu_nms.py` lines 10-38, then threshold and clamp); airsplay:
py-bottom-up-attention `demo/detectron2_mscoco_proposal_maxnms.py` lines 44-72 and 108-121.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from extractors.selection import max_confidence_after_nms, select_best_class_regions, select_regions
from tests.extractors.references import generate_tsv_keep as reference_keep
from tests.extractors.references import generate_tsv_max_conf as reference_max_conf
from tests.extractors.references import maxnms_keep

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Boxes 0 and 1 overlap (IoU ~0.82); 2 and 3 stand alone. Columns: background, cat, dog.
BOXES = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [100, 0, 120, 30]], dtype=torch.float32)
PROBS = torch.tensor([
    [0.1, 0.6, 0.3],   # best cat; survives for both classes
    [0.1, 0.5, 0.4],   # suppressed by box 0 for cat; leads dog and suppresses box 0 there
    [0.8, 0.15, 0.05],
    [0.65, 0.1, 0.25],
])


def random_case(rng: np.random.Generator, regions: int, classes: int,
                ties: bool, peaked: bool) -> tuple[np.ndarray, np.ndarray]:
    """Proposal-like boxes (clustered, some duplicated, integer corners when `ties`) and softmax scores."""
    centres = rng.uniform(0, 200, (max(1, regions // 4), 2))[rng.integers(0, max(1, regions // 4), regions)]
    centres = centres + rng.normal(0, 15, (regions, 2))
    sizes = rng.uniform(4, 90, (regions, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    logits = rng.normal(0, 1, (regions, classes + 1))
    if peaked:
        logits[np.arange(regions), rng.integers(0, classes + 1, regions)] += rng.uniform(0, 8, regions)
    if ties:
        boxes = np.round(boxes)
        duplicated = rng.integers(0, regions, regions // 5)
        boxes[duplicated[1:]] = boxes[duplicated[:-1]]
        logits[duplicated[1:]] = logits[duplicated[:-1]]  # identical features: identical scores
        logits = np.round(logits * 2) / 2  # many equal scores within a class
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return boxes.astype(np.float32), probs.astype(np.float32)


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


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_selection_equals_the_reference_loop_on_many_random_cases(seed):
    rng = np.random.default_rng(seed)
    for case in range(40):
        regions, classes = int(rng.integers(1, 70)), int(rng.integers(1, 30))
        boxes, probs = random_case(rng, regions, classes, ties=case % 2 == 0, peaked=case % 3 != 0)
        nms_thresh = float(rng.choice([0.3, 0.5, 0.7]))
        expected = reference_max_conf(boxes, probs, nms_thresh)
        actual = max_confidence_after_nms(torch.from_numpy(boxes), torch.from_numpy(probs), nms_thresh)
        np.testing.assert_array_equal(actual.numpy(), expected, err_msg=f"seed {seed} case {case}")
        conf_thresh = float(rng.choice([0.0, 0.05, 0.2, 0.5]))
        min_boxes = int(rng.integers(1, 12))
        max_boxes = min_boxes + int(rng.integers(0, 20))
        keep = select_regions(torch.from_numpy(boxes), torch.from_numpy(probs), conf_thresh=conf_thresh,
                              nms_thresh=nms_thresh, min_boxes=min_boxes, max_boxes=max_boxes)
        np.testing.assert_array_equal(keep.numpy(), reference_keep(expected, conf_thresh, min_boxes, max_boxes),
                                      err_msg=f"seed {seed} case {case}")


def test_ties_go_to_the_lower_proposal_index():
    # Two identical boxes with identical scores (bit-identical pooled features give that): one survives.
    boxes = torch.tensor([[0, 0, 20, 20], [0, 0, 20, 20], [40, 40, 60, 60]], dtype=torch.float32)
    probs = torch.tensor([[0.2, 0.8], [0.2, 0.8], [0.5, 0.5]])
    np.testing.assert_array_equal(max_confidence_after_nms(boxes, probs, 0.3).numpy(), np.float32([0.8, 0.0, 0.5]))


@pytest.mark.parametrize("peaked", [True, False], ids=["detector-like", "flat"])
def test_selection_of_300_proposals_equals_the_reference(peaked):
    # Full size in regions; 60 classes keep the reference loop to a second. Flat scores need the
    # full computation, peaked ones stop at the first floor: both must give the reference's list.
    boxes, probs = random_case(np.random.default_rng(7), 300, 60, ties=False, peaked=peaked)
    expected = reference_keep(reference_max_conf(boxes, probs, 0.3), 0.2, 10, 100)
    keep = select_regions(torch.from_numpy(boxes), torch.from_numpy(probs), conf_thresh=0.2, nms_thresh=0.3,
                          min_boxes=10, max_boxes=100)
    np.testing.assert_array_equal(keep.numpy(), expected)


def test_selection_depends_on_the_coordinates_it_is_run_in():
    # Caffe's +1 is not scale-invariant: the same boxes at scale 1.6 and divided back to original
    # pixels suppress differently, which is why regions.py divides by the scale first.
    rng = np.random.default_rng(3)
    flips = 0
    for _ in range(30):
        boxes, probs = random_case(rng, 40, 10, ties=False, peaked=True)
        original = reference_max_conf(boxes, probs, 0.3)
        resized = max_confidence_after_nms(torch.from_numpy(boxes * 1.6), torch.from_numpy(probs), 0.3).numpy()
        flips += int((original != resized).any())
    assert flips > 0


def test_no_proposals_gives_no_regions():
    keep = select_regions(torch.zeros((0, 4)), torch.zeros((0, 3)),
                          conf_thresh=0.2, nms_thresh=0.3, min_boxes=2, max_boxes=4)
    assert keep.numel() == 0


def test_airsplay_selection_raises_its_threshold_until_enough_survive():
    rng = np.random.default_rng(11)
    raised = 0
    for case in range(60):
        boxes, probs = random_case(rng, int(rng.integers(5, 120)), 5, ties=case % 2 == 0, peaked=True)
        scores = torch.from_numpy(probs[:, 1:].max(axis=1))
        min_boxes = int(rng.integers(1, 40))
        max_boxes = min_boxes + int(rng.integers(0, 30))
        expected = maxnms_keep(boxes, scores.numpy(), min_boxes, max_boxes)
        keep = select_best_class_regions(torch.from_numpy(boxes), scores, nms_thresh=0.3, min_boxes=min_boxes,
                                         max_boxes=max_boxes)
        assert keep.tolist() == expected.tolist(), case
        raised += int(len(nms(torch.from_numpy(boxes), scores, 0.3)) < min_boxes)
    assert raised > 5  # the escalation was exercised
