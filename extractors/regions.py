"""From one image's proposals and head outputs to the regions the store keeps, as each recipe does it.

caffe (`generate_tsv.py` lines 74-95, MILVLG `utils/extract_utils.py` lines 65-89): the
proposals themselves, divided by the image scale into original-image pixels BEFORE the
per-class NMS of the selection (its +1 box sizes are not scale-invariant); attribute
confidence from the softmax over all 401 attribute outputs.

airsplay (`demo/detectron2_mscoco_proposal_maxnms.py` lines 44-72, 108-137): each proposal's
box regressed for its best class (detectron2's decoding, no +1), clipped to the resized image,
selected there by one NMS, then scaled per side to the original image and clipped; attribute
confidence from a softmax over the 400 real attributes only (its attribute demo, cell 4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from extractors.config import ExtractorConfig
from extractors.rpn import clip_boxes, decode_boxes
from extractors.selection import select_best_class_regions, select_regions


@dataclass
class DetectorOutput:
    """Regions of one image: boxes (K, 4) original pixels x1y1x2y2, features (K, D).

    Ids are detector class indices, as the store keeps them: 0 = background / no attribute,
    i + 1 = line i of objects_vocab.txt / attributes_vocab.txt. The best foreground class and
    the best real attribute are reported; without an attribute head attr_ids and attr_conf are 0.
    """

    boxes: np.ndarray
    features: np.ndarray
    object_ids: np.ndarray
    object_conf: np.ndarray
    attr_ids: np.ndarray
    attr_conf: np.ndarray


@dataclass
class ImageRegions:
    """One image's proposals (P, 4) in network pixels with their head outputs, and its geometry."""

    proposals: torch.Tensor
    features: torch.Tensor
    class_probs: torch.Tensor
    attr_logits: Optional[torch.Tensor]
    box_deltas: Optional[torch.Tensor]
    image_size: tuple[int, int]  # (h, w) of the network input
    original_hw: tuple[int, int]
    scale: float


def _caffe_attributes(attr_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.softmax(attr_logits, dim=1)[:, 1:].max(dim=1)


def _airsplay_attributes(attr_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.softmax(attr_logits[:, 1:], dim=1).max(dim=1)


ATTRIBUTE_CONFIDENCE: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "caffe": _caffe_attributes,
    "airsplay": _airsplay_attributes,
}


def describe(boxes: torch.Tensor, regions: ImageRegions, keep: torch.Tensor, recipe: str) -> DetectorOutput:
    """The stored description of the kept proposals; `boxes` (K, 4) are already in original pixels."""
    object_conf, best_object = regions.class_probs[keep, 1:].max(dim=1)
    if regions.attr_logits is None:  # no attribute head: stored as 0 = "no attribute", confidence 0
        attr_conf, attr_ids = torch.zeros_like(object_conf), torch.zeros_like(best_object)
    else:
        attr_conf, best_attr = ATTRIBUTE_CONFIDENCE[recipe](regions.attr_logits[keep])
        attr_ids = best_attr + 1
    return DetectorOutput(
        boxes=boxes.cpu().numpy().astype(np.float32),
        features=regions.features[keep].cpu().numpy().astype(np.float32),
        object_ids=(best_object + 1).cpu().numpy().astype(np.int64),
        object_conf=object_conf.cpu().numpy().astype(np.float32),
        attr_ids=attr_ids.cpu().numpy().astype(np.int64),
        attr_conf=attr_conf.cpu().numpy().astype(np.float32),
    )


def caffe_regions(regions: ImageRegions, config: ExtractorConfig) -> DetectorOutput:
    """Selection on the proposals in original-image pixels (generate_tsv.py line 79: rois / im_scale)."""
    boxes = regions.proposals.float() / regions.scale
    keep = select_regions(boxes, regions.class_probs, conf_thresh=config.conf_thresh, nms_thresh=config.nms_thresh,
                          min_boxes=config.min_boxes, max_boxes=config.max_boxes)
    return describe(boxes[keep], regions, keep, "caffe")


def best_class_boxes(regions: ImageRegions) -> tuple[torch.Tensor, torch.Tensor]:
    """Each proposal's best foreground class score (P,) and its regressed box (P, 4), clipped to the network input."""
    if regions.box_deltas is None:
        raise RuntimeError("best_class_boxes needs the box regression outputs (RegionPredictions.box_deltas)")
    best_conf, best = regions.class_probs[:, 1:].max(dim=1)
    deltas = regions.box_deltas.view(len(best), -1, 4)[torch.arange(len(best), device=best.device), best]
    height, width = regions.image_size
    boxes = clip_boxes(decode_boxes(deltas, regions.proposals.float(), offset=0.0), height, width, offset=0.0)
    return best_conf, boxes


def airsplay_regions(regions: ImageRegions, config: ExtractorConfig) -> DetectorOutput:
    """Selection on best-class regressed boxes in network pixels, then boxes scaled per side (detector_postprocess)."""
    best_conf, boxes = best_class_boxes(regions)
    keep = select_best_class_regions(boxes, best_conf, nms_thresh=config.nms_thresh, min_boxes=config.min_boxes,
                                     max_boxes=config.max_boxes)
    (height, width), (original_h, original_w) = regions.image_size, regions.original_hw
    to_original = torch.tensor([original_w / width, original_h / height] * 2, device=boxes.device)
    return describe(clip_boxes(boxes[keep] * to_original, original_h, original_w, offset=0.0),
                    regions, keep, "airsplay")


REGION_RULES: dict[str, Callable[[ImageRegions, ExtractorConfig], DetectorOutput]] = {
    "caffe": caffe_regions,
    "airsplay": airsplay_regions,
}
