"""Region proposal network on res4 (stride 16), with each recipe's anchors and proposal rules.

Objectness is one sigmoid logit per anchor (detectron2 convention); Caffe's softmax pairs are
converted on load (see layouts.py). Anchor channels are in Caffe's ratio-major order (for each
ratio, each scale). The caffe recipe uses Caffe's `generate_anchors` (a 16-pixel base box,
rounded sides, centred at 7.5 + 16 * cell) and its proposal layer with +1 box sizes; the
airsplay recipe uses detectron2's anchors (unrounded, centred at 16 * cell) and its
`find_top_rpn_proposals` (top-k first, boxes without +1, no minimum size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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
            anchors.append([centre - 0.5 * (w - 1), centre - 0.5 * (h - 1),
                            centre + 0.5 * (w - 1), centre + 0.5 * (h - 1)])
    return torch.tensor(anchors, dtype=torch.float32)


def detectron2_cell_anchors(scales: tuple[int, ...], ratios: tuple[float, ...],
                            base_size: int = FEATURE_STRIDE) -> torch.Tensor:
    """detectron2's `generate_cell_anchors` for sizes base_size * scale, (A, 4) centred at 0, ratio-major here."""
    anchors = []
    for ratio in ratios:
        for scale in scales:
            w = math.sqrt((base_size * scale) ** 2.0 / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


CELL_ANCHORS: dict[str, Callable[[tuple[int, ...], tuple[float, ...]], torch.Tensor]] = {
    "caffe": cell_anchors,
    "airsplay": detectron2_cell_anchors,
}


def grid_anchors(cell: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Anchors over a (height, width) grid, (height * width * A, 4), cell-major then anchor."""
    ys = torch.arange(height, dtype=torch.float32, device=cell.device) * FEATURE_STRIDE
    xs = torch.arange(width, dtype=torch.float32, device=cell.device) * FEATURE_STRIDE
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.view(1, -1, 4)).reshape(-1, 4)


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """(N, 4) deltas (dx, dy, dw, dh) applied to (N, 4) boxes.

    offset 1 is Caffe's `bbox_transform_inv` (inclusive corners: width = x2 - x1 + 1); offset 0
    is detectron2's `Box2BoxTransform.apply_deltas` with weights 1 (width = x2 - x1).
    """
    widths = boxes[:, 2] - boxes[:, 0] + offset
    heights = boxes[:, 3] - boxes[:, 1] + offset
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    pred_ctr_x = deltas[:, 0] * widths + ctr_x
    pred_ctr_y = deltas[:, 1] * heights + ctr_y
    pred_w = torch.exp(deltas[:, 2].clamp(max=MAX_LOG_SCALE)) * widths
    pred_h = torch.exp(deltas[:, 3].clamp(max=MAX_LOG_SCALE)) * heights
    return torch.stack([pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                        pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h], dim=1)


def clip_boxes(boxes: torch.Tensor, height: int, width: int, offset: float = 1.0) -> torch.Tensor:
    """Clip (N, 4) boxes to [0, width - offset] x [0, height - offset] (Caffe: pixel indices; detectron2: edges)."""
    x = boxes[:, 0::2].clamp(0, width - offset)
    y = boxes[:, 1::2].clamp(0, height - offset)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


@dataclass(frozen=True)
class ProposalSettings:
    """The RPN's post-processing numbers (ExtractorConfig's rpn_* fields)."""

    pre_nms_topk: int
    post_nms_topk: int
    nms_thresh: float
    min_size: int


def caffe_proposals(deltas: torch.Tensor, anchors: torch.Tensor, logits: torch.Tensor, height: int, width: int,
                    scale: float, settings: ProposalSettings) -> torch.Tensor:
    """Caffe's proposal layer: decode (+1), clip, drop sides < min_size * scale, top-k, NMS (+1 areas), top-k."""
    boxes = clip_boxes(decode_boxes(deltas, anchors), height, width)
    min_side = settings.min_size * scale
    big_enough = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_side) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_side)
    boxes, logits = boxes[big_enough], logits[big_enough]
    order = torch.argsort(logits, descending=True, stable=True)[: settings.pre_nms_topk]
    boxes, logits = boxes[order], logits[order]
    inclusive = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device)  # Caffe's +1 areas
    keep = nms(inclusive, logits, settings.nms_thresh)[: settings.post_nms_topk]
    return boxes[keep]


def detectron2_proposals(deltas: torch.Tensor, anchors: torch.Tensor, logits: torch.Tensor, height: int, width: int,
                         scale: float, settings: ProposalSettings) -> torch.Tensor:
    """detectron2's `find_top_rpn_proposals` (MIN_SIZE 0): top-k, decode, clip, drop empty, NMS, top-k;
    no +1 anywhere."""
    del scale  # detectron2 has no minimum size in original pixels
    order = torch.argsort(logits, descending=True, stable=True)[: settings.pre_nms_topk]
    boxes = clip_boxes(decode_boxes(deltas[order], anchors[order], offset=0.0), height, width, offset=0.0)
    logits = logits[order]
    non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, logits = boxes[non_empty], logits[non_empty]
    keep = nms(boxes, logits, settings.nms_thresh)[: settings.post_nms_topk]
    return boxes[keep]


ProposalRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int, float, ProposalSettings], torch.Tensor]
PROPOSAL_RULES: dict[str, ProposalRule] = {"caffe": caffe_proposals, "airsplay": detectron2_proposals}


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

    def __init__(self, in_channels: int, spec: BackboneSpec, settings: ProposalSettings, recipe: str = "caffe") -> None:
        super().__init__()
        self.rpn_head = RPNHead(in_channels, spec)
        anchors = CELL_ANCHORS[recipe](spec.anchor_scales, spec.anchor_ratios)
        self.register_buffer("cell_anchors", anchors, persistent=False)
        self.settings = settings
        self.proposal_rule = PROPOSAL_RULES[recipe]

    def forward(self, features: torch.Tensor, feature_sizes: list[tuple[int, int]],
                image_sizes: list[tuple[int, int]], scales: list[float]) -> list[torch.Tensor]:
        logits, deltas = self.rpn_head(features)
        num_anchors = logits.shape[1]
        proposals = []
        for index, ((fh, fw), (h, w), scale) in enumerate(zip(feature_sizes, image_sizes, scales)):
            image_logits = logits[index, :, :fh, :fw].permute(1, 2, 0).reshape(-1).float()
            image_deltas = (deltas[index, :, :fh, :fw].reshape(num_anchors, 4, fh, fw).permute(2, 3, 0, 1)
                            .reshape(-1, 4).float())
            anchors = grid_anchors(self.cell_anchors, fh, fw)
            proposals.append(self.proposal_rule(image_deltas, anchors, image_logits, h, w, scale, self.settings))
        return proposals
