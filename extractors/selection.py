"""Region selection exactly as bottom-up-attention's `generate_tsv.py`.

Each proposal's confidence is its best foreground class score among the classes for which it
survives per-class NMS; proposals reaching `conf_thresh` are kept, and the count is clamped
to [min_boxes, max_boxes] by taking the most confident ones.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou


def caffe_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(R, R) IoU with Caffe's inclusive pixel corners (width = x2 - x1 + 1), as its NMS uses."""
    inclusive = boxes.float() + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device)
    return box_iou(inclusive, inclusive)


def per_class_nms_keep(boxes: torch.Tensor, scores: torch.Tensor, nms_thresh: float) -> torch.Tensor:
    """Greedy NMS run for every class at once: (R, 4), (R, C) -> kept mask (C, R).

    One IoU matrix serves all classes; step r visits each class's r-th best box, so the
    loop is R steps of (C, R) work instead of C separate NMS calls.
    """
    num_regions, num_classes = scores.shape
    # uint8 rather than bool: index_select on bool rows is far slower on CPU.
    overlaps = (caffe_iou(boxes) > nms_thresh).to(torch.uint8)
    order = torch.argsort(scores.t(), dim=1, descending=True, stable=True)
    classes = torch.arange(num_classes, device=scores.device)
    suppressed = torch.zeros((num_classes, num_regions), dtype=torch.uint8, device=scores.device)
    kept = torch.zeros_like(suppressed)
    for rank in range(num_regions):
        candidate = order[:, rank]
        alive = 1 - suppressed[classes, candidate]
        kept[classes, candidate] = alive
        suppressed |= overlaps.index_select(0, candidate) * alive[:, None]
    return kept.bool()


def max_confidence_after_nms(boxes: torch.Tensor, class_probs: torch.Tensor, nms_thresh: float) -> torch.Tensor:
    """(R, 4) boxes, (R, C + 1) probabilities with background at 0 -> (R,) max_conf.

    A proposal suppressed for a class contributes nothing for that class (0 if suppressed
    for all), as in the reference loop over classes 1..C.
    """
    scores = class_probs[:, 1:].float()
    if scores.shape[0] == 0:
        return scores.new_zeros((0,))
    kept = per_class_nms_keep(boxes, scores, nms_thresh)
    return (scores * kept.t()).amax(dim=1)


def select_regions(boxes: torch.Tensor, class_probs: torch.Tensor, *, conf_thresh: float, nms_thresh: float,
                   min_boxes: int, max_boxes: int) -> torch.Tensor:
    """Indices (K,) of the kept proposals, in the reference's order.

    Within [min_boxes, max_boxes] the kept proposals stay in proposal order (the reference's
    `np.where`); otherwise they are the top ones by max_conf, most confident first.
    """
    max_conf = max_confidence_after_nms(boxes, class_probs, nms_thresh)
    keep = torch.nonzero(max_conf >= conf_thresh).flatten()
    if min_boxes <= keep.numel() <= max_boxes:
        return keep
    by_confidence = torch.argsort(max_conf, descending=True, stable=True)
    return by_confidence[: min_boxes if keep.numel() < min_boxes else max_boxes]
