"""Region selection: which proposals become an image's stored regions.

caffe (`generate_tsv.py` lines 79-95, MILVLG `save_roi_features`): each proposal's confidence is
its best foreground class score among the classes for which it survives per-class NMS (Caffe's
`py_cpu_nms`: +1 box sizes, IoU above the threshold suppresses, boxes in original-image
pixels); proposals reaching `conf_thresh` are kept, and the count is clamped to
[min_boxes, max_boxes] by taking the most confident ones.

airsplay (`demo/detectron2_mscoco_proposal_maxnms.py` lines 44-72 and 108-121): one NMS over
the proposals' best-class regressed boxes, its threshold raised by 0.1 until min_boxes survive,
the best max_boxes kept.

Ties (equal scores) go to the lower proposal index, i.e. the proposal the RPN ranked higher.
On the CPU the selection runs on one intra-op thread: its tensors are small (at most R x C),
and a second thread only adds waits at every operation when the cores are busy (decoding
workers, other jobs): 10 ms became 600 ms under load in bench_extract.py.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import nms

from extractors.threads import torch_threads

BITS_PER_WORD = 64  # packed overlap rows: one int64 word holds the overlap bits of 64 boxes


def caffe_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(R, R) IoU of (R, 4) boxes as `py_cpu_nms` computes it: inclusive corners, float32, same operation order."""
    x1, y1, x2, y2 = boxes.float().unbind(dim=1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    widths = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None]) + 1).clamp(min=0)
    heights = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None]) + 1).clamp(min=0)
    inter = widths * heights
    return inter / (areas[:, None] + areas[None] - inter)


def _pack_rows(mask: torch.Tensor) -> torch.Tensor:
    """(R, R) bool -> (R, W) int64 with bit j % 64 of word j // 64 set where mask[:, j] (two's complement)."""
    rows, cols = mask.shape
    words = -(-cols // BITS_PER_WORD)
    padded = torch.zeros((rows, words * BITS_PER_WORD), dtype=torch.int64, device=mask.device)
    padded[:, :cols] = mask
    weights = (torch.ones(BITS_PER_WORD, dtype=torch.int64, device=mask.device)
               << torch.arange(BITS_PER_WORD, device=mask.device))
    return (padded.view(rows, words, BITS_PER_WORD) * weights).sum(dim=2)  # distinct powers of two: no carries


def _ranked(scores: torch.Tensor, count: int) -> torch.Tensor:
    """(R, C) -> (C, count): each column's `count` best rows, best first, equal scores by lower row first.

    Probabilities are non-negative, so their float32 bit patterns sort like the values; with the
    row folded into the low bits every key is distinct, so any sort gives this one order (numpy's
    on the CPU, several times faster there than torch's).
    """
    num_regions = scores.shape[0]
    row_bits = max(1, num_regions.bit_length())
    keys = scores.t().float().contiguous().view(torch.int32).to(torch.int64) << row_bits
    keys |= (2 ** row_bits - 1) - torch.arange(num_regions, device=scores.device)
    if keys.device.type == "cpu":
        return torch.from_numpy(np.argsort(-keys.numpy(), axis=1)[:, :count])
    return torch.topk(keys, count, dim=1, sorted=True).indices


def _greedy_nms_by_rank(packed: torch.Tensor, order: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Greedy NMS for many classes at once: (C, K) candidates by rank, `valid` (C, K) -> kept (C, K).

    The boxes are shared by all classes, so one overlap matrix packed into bits (R, W) serves
    them all; step k visits each class's k-th best box and ORs its overlap row into that
    class's suppressed set: K steps of (C, W) word operations instead of C NMS loops.
    """
    num_classes, depth = order.shape
    order_t, valid_t = order.t().contiguous(), valid.t().contiguous()
    words_t = order_t // BITS_PER_WORD
    bits_t = torch.ones_like(order_t) << (order_t % BITS_PER_WORD)
    suppressed = torch.zeros((num_classes, packed.shape[1]), dtype=torch.int64, device=packed.device)
    kept_t = torch.empty((depth, num_classes), dtype=torch.bool, device=packed.device)
    nothing = torch.zeros((), dtype=torch.int64, device=packed.device)
    for rank in range(depth):
        alive = ((suppressed.gather(1, words_t[rank].unsqueeze(1)).squeeze(1) & bits_t[rank]) == 0) & valid_t[rank]
        kept_t[rank] = alive
        suppressed |= torch.where(alive.unsqueeze(1), packed.index_select(0, order_t[rank]), nothing)
    return kept_t.t()


def max_confidence_at_least(boxes: torch.Tensor, scores: torch.Tensor, nms_thresh: float,
                            floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact max_conf (R,) of the proposals whose max_conf reaches `floor`, and which those are (R,) bool.

    Per-class greedy NMS only needs, in each class, the boxes scoring >= floor: a box's fate
    depends on higher-scoring boxes alone, and scores below the floor cannot raise a max_conf
    above it. Proposals left undetermined have max_conf < floor (reported as 0). floor 0: all.
    """
    candidates = scores >= floor
    counts = candidates.sum(dim=0)
    classes = torch.nonzero(counts).flatten()
    max_conf = scores.new_zeros((scores.shape[0],))
    if classes.numel() == 0:
        return max_conf, torch.full_like(max_conf, floor <= 0, dtype=torch.bool)
    depth = int(counts.max())
    order = _ranked(scores[:, classes], depth)
    valid = torch.arange(depth, device=scores.device)[None] < counts[classes][:, None]
    kept_by_rank = _greedy_nms_by_rank(_pack_rows(caffe_iou(boxes) > nms_thresh), order, valid)
    kept = torch.zeros((classes.numel(), scores.shape[0]), dtype=torch.bool, device=scores.device)
    kept.scatter_(1, order, kept_by_rank)
    max_conf = (scores[:, classes].t() * kept).amax(dim=0)
    return max_conf, kept.any(dim=0) if floor > 0 else torch.ones_like(max_conf, dtype=torch.bool)


def max_confidence_after_nms(boxes: torch.Tensor, class_probs: torch.Tensor, nms_thresh: float) -> torch.Tensor:
    """(R, 4) boxes, (R, C + 1) probabilities with background at 0 -> (R,) max_conf.

    A proposal suppressed for a class contributes nothing for that class (0 if suppressed
    for all), as in the reference loop over classes 1..C.
    """
    scores = class_probs[:, 1:].float()
    with torch_threads(1 if scores.device.type == "cpu" else 0):
        return max_confidence_at_least(boxes, scores, nms_thresh, 0.0)[0]


def select_regions(boxes: torch.Tensor, class_probs: torch.Tensor, *, conf_thresh: float, nms_thresh: float,
                   min_boxes: int, max_boxes: int) -> torch.Tensor:
    """caffe: indices (K,) of the kept proposals, in the reference's order; `boxes` in original-image pixels.

    Within [min_boxes, max_boxes] the kept proposals stay in proposal order (the reference's
    `np.where`); otherwise they are the top ones by max_conf, most confident first. max_conf is
    computed down to a floor that starts at conf_thresh and drops only while fewer than
    min_boxes proposals are known: the result is the full computation's, at a fraction of it.
    """
    scores = class_probs[:, 1:].float()
    with torch_threads(1 if scores.device.type == "cpu" else 0):
        for floor in (conf_thresh, conf_thresh / 8, conf_thresh / 64, 0.0):
            max_conf, known = max_confidence_at_least(boxes, scores, nms_thresh, floor)
            keep = torch.nonzero(known & (max_conf >= conf_thresh)).flatten()
            if keep.numel() >= min_boxes or int(known.sum()) >= min_boxes or floor == 0.0:
                break
        if min_boxes <= keep.numel() <= max_boxes:
            return keep
        by_confidence = torch.argsort(max_conf, descending=True, stable=True)
        return by_confidence[: min_boxes if keep.numel() < min_boxes else max_boxes]


def select_best_class_regions(boxes: torch.Tensor, scores: torch.Tensor, *, nms_thresh: float, min_boxes: int,
                              max_boxes: int) -> torch.Tensor:
    """airsplay: indices (K,) of the kept proposals, most confident first.

    `boxes` (R, 4) are each proposal's regressed box for its best class and `scores` (R,) that
    class's probability. NMS at nms_thresh, nms_thresh + 0.1, ... (below 1) until min_boxes
    survive (else the last try stands); at most max_boxes are kept.
    """
    keep = scores.new_zeros((0,), dtype=torch.int64)
    for threshold in np.arange(nms_thresh, 1.0, 0.1) if nms_thresh < 1.0 else [nms_thresh]:
        keep = nms(boxes.float(), scores.float(), float(threshold))[:max_boxes]
        if keep.numel() >= min_boxes:
            break
    return keep
