"""Region proposal network on res4 (stride 16), Caffe's anchors and proposal rules.

Objectness is one sigmoid logit per anchor (detectron2 convention); Caffe's softmax pairs are
converted on load (see weights.py). Anchors follow Caffe's `generate_anchors`: a 16-pixel
base box, ratio-major order (for each ratio, each scale), centred at 7.5 + 16 * cell.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from extractors.config import BackboneSpec

FEATURE_STRIDE = 16
MAX_LOG_SCALE = math.log(1000.0 / 16)  # keeps exp() finite for wild deltas


def cell_anchors(scales: tuple[int, ...], ratios: tuple[float, ...], base_size: int = FEATURE_STRIDE) -> torch.Tensor:
    """Caffe's anchors for one cell, (A, 4) x1y1x2y2 with inclusive corners, ratio-major."""
    centre = (base_size - 1) / 2.0
    anchors = []
    for ratio in ratios:
        ratio_w = np.round(np.sqrt(base_size * base_size / ratio))
        ratio_h = np.round(ratio_w * ratio)
        for scale in scales:
            w, h = ratio_w * scale, ratio_h * scale
            anchors.append([centre - 0.5 * (w - 1), centre - 0.5 * (h - 1), centre + 0.5 * (w - 1), centre + 0.5 * (h - 1)])
    return torch.tensor(anchors, dtype=torch.float32)


def grid_anchors(cell: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Anchors over a (height, width) grid, (height * width * A, 4), cell-major then anchor."""
    ys = torch.arange(height, dtype=torch.float32, device=cell.device) * FEATURE_STRIDE
    xs = torch.arange(width, dtype=torch.float32, device=cell.device) * FEATURE_STRIDE
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.view(1, -1, 4)).reshape(-1, 4)


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Caffe's `bbox_transform_inv`: (N, 4) deltas (dx, dy, dw, dh) applied to (N, 4) boxes."""
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    pred_ctr_x = deltas[:, 0] * widths + ctr_x
    pred_ctr_y = deltas[:, 1] * heights + ctr_y
    pred_w = torch.exp(deltas[:, 2].clamp(max=MAX_LOG_SCALE)) * widths
    pred_h = torch.exp(deltas[:, 3].clamp(max=MAX_LOG_SCALE)) * heights
    return torch.stack([pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                        pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h], dim=1)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip (N, 4) boxes to pixel indices [0, width - 1] x [0, height - 1]."""
    x = boxes[:, 0::2].clamp(0, width - 1)
    y = boxes[:, 1::2].clamp(0, height - 1)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then per-anchor objectness logits (A) and box deltas (4A)."""

    def __init__(self, in_channels: int, spec: BackboneSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, spec.rpn_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(spec.rpn_channels, spec.num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(spec.rpn_channels, spec.num_anchors * 4, kernel_size=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.conv(features))
        return self.objectness_logits(hidden), self.anchor_deltas(hidden)


class RegionProposalNetwork(nn.Module):
    """res4 (B, C, Hf, Wf) -> per image (P, 4) proposals in resized-image pixels, best first."""

    def __init__(self, in_channels: int, spec: BackboneSpec, *, pre_nms_topk: int, post_nms_topk: int,
                 nms_thresh: float, min_size: int) -> None:
        super().__init__()
        self.rpn_head = RPNHead(in_channels, spec)
        self.register_buffer("cell_anchors", cell_anchors(spec.anchor_scales, spec.anchor_ratios), persistent=False)
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_size = min_size

    def forward(self, features: torch.Tensor, feature_sizes: list[tuple[int, int]],
                image_sizes: list[tuple[int, int]], scales: list[float]) -> list[torch.Tensor]:
        logits, deltas = self.rpn_head(features)
        num_anchors = logits.shape[1]
        proposals = []
        for index, ((fh, fw), (h, w), scale) in enumerate(zip(feature_sizes, image_sizes, scales)):
            image_logits = logits[index, :, :fh, :fw].permute(1, 2, 0).reshape(-1).float()
            image_deltas = deltas[index, :, :fh, :fw].reshape(num_anchors, 4, fh, fw).permute(2, 3, 0, 1).reshape(-1, 4).float()
            anchors = grid_anchors(self.cell_anchors, fh, fw)
            proposals.append(self._select(decode_boxes(image_deltas, anchors), image_logits, h, w, scale))
        return proposals

    def _select(self, boxes: torch.Tensor, logits: torch.Tensor, height: int, width: int, scale: float) -> torch.Tensor:
        """Caffe's proposal layer: clip, drop tiny boxes, top-k, NMS, top-k."""
        boxes = clip_boxes(boxes, height, width)
        min_side = self.min_size * scale
        big_enough = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_side) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_side)
        boxes, logits = boxes[big_enough], logits[big_enough]
        order = torch.argsort(logits, descending=True, stable=True)[: self.pre_nms_topk]
        boxes, logits = boxes[order], logits[order]
        inclusive = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device)  # Caffe's +1 areas
        keep = nms(inclusive, logits, self.nms_thresh)[: self.post_nms_topk]
        return boxes[keep]
