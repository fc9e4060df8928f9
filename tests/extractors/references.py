"""Small, independent re-statements of the reference implementations' rules, for the parity tests.

Each function names the public file and lines it restates (read, not copied):
  BUTD   = peteanderson80/bottom-up-attention (Caffe; `tools/generate_tsv.py`, `lib/...`)
  AIR    = airsplay/py-bottom-up-attention (detectron2 fork; `detectron2/...`, `demo/...`)
  MILVLG = MILVLG/bottom-up-attention.pytorch (`bua/caffe/...`, `utils/extract_utils.py`)
They are written for clarity (numpy loops), not speed, and share no code with `extractors/`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.ops import nms

CAFFE_MEANS_BGR = np.array([102.9801, 115.9465, 122.7717], dtype=np.float32)


# ---------------------------------------------------------------- Caffe / MILVLG


def caffe_generate_anchors(scales=(4, 8, 16, 32), ratios=(0.5, 1.0, 2.0), base=16) -> np.ndarray:
    """BUTD lib/rpn/generate_anchors.py lines 37-98: base box [0, 0, 15, 15], _ratio_enum then _scale_enum
    (ratio-major)."""
    w, h, x_ctr, y_ctr = base, base, 0.5 * (base - 1), 0.5 * (base - 1)
    out = []
    for ratio in ratios:
        ws = np.round(np.sqrt(w * h / ratio))
        hs = np.round(ws * ratio)
        for scale in scales:
            sw, sh = ws * scale, hs * scale
            out.append([x_ctr - 0.5 * (sw - 1), y_ctr - 0.5 * (sh - 1), x_ctr + 0.5 * (sw - 1), y_ctr + 0.5 * (sh - 1)])
    return np.array(out, dtype=np.float32)


def py_cpu_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """BUTD lib/nms/py_cpu_nms.py lines 10-38: +1 areas, float32, keep while IoU <= thresh;
    equal scores: lower index first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
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


def generate_tsv_max_conf(boxes: np.ndarray, probs: np.ndarray, thresh: float) -> np.ndarray:
    """BUTD tools/generate_tsv.py lines 84-89: max over classes 1..C of the scores each class's NMS keeps."""
    max_conf = np.zeros(len(boxes), dtype=np.float32)
    for cls in range(1, probs.shape[1]):
        keep = py_cpu_nms(boxes, probs[:, cls], thresh)
        max_conf[keep] = np.where(probs[keep, cls] > max_conf[keep], probs[keep, cls], max_conf[keep])
    return max_conf


def generate_tsv_keep(max_conf: np.ndarray, conf_thresh: float, min_boxes: int, max_boxes: int) -> np.ndarray:
    """BUTD tools/generate_tsv.py lines 91-95 (argsort()[::-1] read as most confident first, ties by lower index)."""
    keep = np.where(max_conf >= conf_thresh)[0]
    by_confidence = np.argsort(-max_conf, kind="stable")
    if len(keep) < min_boxes:
        return by_confidence[:min_boxes]
    return by_confidence[:max_boxes] if len(keep) > max_boxes else keep


# ---------------------------------------------------------------- airsplay (detectron2 0.1-era fork)


def detectron2_resize(image: np.ndarray, short: int, max_size: int) -> np.ndarray:
    """AIR data/transforms/transform_gen.py lines 200-211 (sizes) and transform.py lines 79-85 (PIL bilinear, uint8)."""
    h, w = image.shape[:2]
    scale = short * 1.0 / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    size = (int(neww + 0.5), int(newh + 0.5))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def detectron2_cell_anchors(sizes=(64, 128, 256, 512), ratios=(0.5, 1.0, 2.0)) -> np.ndarray:
    """AIR modeling/anchor_generator.py lines 162-175: for each size, each ratio; centred at 0, unrounded."""
    out = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size ** 2.0 / ratio)
            h = ratio * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.array(out, dtype=np.float32)


def detectron2_grid_anchors(cell: np.ndarray, height: int, width: int, stride: int = 16) -> np.ndarray:
    """AIR anchor_generator.py lines 41-53 and 128-136: shifts 0, 16, ... (offset 0), cell-major then anchor."""
    ys, xs = np.meshgrid(np.arange(height) * stride, np.arange(width) * stride, indexing="ij")
    shifts = np.stack([xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    return (shifts[:, None, :] + cell[None]).reshape(-1, 4)


def detectron2_apply_deltas(deltas: np.ndarray, boxes: np.ndarray, weights=(1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """AIR modeling/box_regression.py lines 69-107: no +1, deltas divided by weights, dw/dh clamped at log(1000/16)."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, math.log(1000.0 / 16))
    dh = np.minimum(deltas[:, 3::4] / wh, math.log(1000.0 / 16))
    px, py = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    pw, ph = np.exp(dw) * widths[:, None], np.exp(dh) * heights[:, None]
    out = np.zeros_like(deltas)
    out[:, 0::4], out[:, 1::4], out[:, 2::4], out[:, 3::4] = px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph
    return out


def detectron2_clip(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """AIR structures/boxes.py lines 131-135: x in [0, width], y in [0, height] (no -1)."""
    return np.stack([boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height),
                     boxes[:, 2].clip(0, width), boxes[:, 3].clip(0, height)], axis=1)


def find_top_rpn_proposals(proposals: np.ndarray, logits: np.ndarray, height: int, width: int,
                           pre_nms_topk: int, post_nms_topk: int, nms_thresh: float) -> np.ndarray:
    """AIR proposal_generator/rpn_outputs.py lines 95-141 with MIN_SIZE 0: top-k, clip, non-empty, NMS, top-k."""
    order = np.argsort(-logits, kind="stable")[:pre_nms_topk]
    boxes, scores = detectron2_clip(proposals[order], height, width), logits[order]
    non_empty = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    boxes, scores = boxes[non_empty], scores[non_empty]
    keep = nms(torch.from_numpy(boxes), torch.from_numpy(scores), nms_thresh)[:post_nms_topk]
    return boxes[keep.numpy()]


def maxnms_keep(boxes: np.ndarray, scores: np.ndarray, min_boxes: int,
                max_boxes: int, start: float = 0.3) -> np.ndarray:
    """AIR demo/detectron2_mscoco_proposal_maxnms.py lines 62-64 and 113-119:
    NMS at 0.3, 0.4, ... until min_boxes survive."""
    keep = np.zeros(0, dtype=np.int64)
    for nms_thresh in np.arange(start, 1.0, 0.1):
        keep = nms(torch.from_numpy(boxes), torch.from_numpy(scores), nms_thresh)[:max_boxes].numpy()
        if len(keep) >= min_boxes:
            break
    return keep


def airsplay_attributes(attr_logits_airsplay_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AIR demo/demo_feature_extraction_attr.ipynb cell 4: softmax over logits[..., :-1] ('no attribute' last), max."""
    logits = attr_logits_airsplay_order[:, :-1]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.max(axis=1), probs.argmax(axis=1)
