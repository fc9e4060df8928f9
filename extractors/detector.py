"""The bottom-up-attention detector: ResNet C4 + RPN + res5 box head + region selection.

`build_detector(config)` is the one entry point; its output per image is what the feature
store records (boxes in original-image pixels, pooled res5 features, class and attribute).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from extractors.backbone import ResNetC4
from extractors.config import ExtractorConfig
from extractors.preprocess import ImageBatch
from extractors.roi_heads import RegionPredictions, Res5ROIHeads
from extractors.rpn import RegionProposalNetwork
from extractors.selection import select_regions
from extractors.weights import load_weights
from pipeline.devices import resolve_device

AMP_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class DetectorOutput:
    """Regions of one image: boxes (K, 4) original pixels x1y1x2y2, features (K, D).

    Ids are detector class indices, as the store keeps them: 0 = background / no attribute,
    i + 1 = line i of objects_vocab.txt / attributes_vocab.txt (never 0 here: the best
    foreground class and the best real attribute are reported).
    """

    boxes: np.ndarray
    features: np.ndarray
    object_ids: np.ndarray
    object_conf: np.ndarray
    attr_ids: np.ndarray
    attr_conf: np.ndarray


class BottomUpDetector(nn.Module):
    """Faster R-CNN C4 with attributes; module names match the published detectron2 ports."""

    def __init__(self, config: ExtractorConfig) -> None:
        super().__init__()
        spec = config.spec
        self.config = config
        self.backbone = ResNetC4(spec)
        self.proposal_generator = RegionProposalNetwork(
            self.backbone.out_channels, spec, pre_nms_topk=config.rpn_pre_nms_topk,
            post_nms_topk=config.rpn_post_nms_topk, nms_thresh=config.rpn_nms_thresh, min_size=config.rpn_min_size)
        self.roi_heads = Res5ROIHeads(spec)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch: ImageBatch, given_boxes: list[np.ndarray] | None = None) -> list[DetectorOutput]:
        """Detect and select regions, or (given_boxes: per image (n, 4) original pixels) describe those boxes."""
        if given_boxes is not None and len(given_boxes) != len(batch.image_sizes):
            raise ValueError(f"given_boxes has {len(given_boxes)} entries for a batch of {len(batch.image_sizes)} images")
        with torch.inference_mode(), self._autocast():
            images = batch.images.to(self.device)
            features, feature_sizes = self.backbone(images, batch.image_sizes)
            if given_boxes is None:
                rois = self.proposal_generator(features, feature_sizes, batch.image_sizes, batch.scales)
            else:
                rois = [self._scaled_boxes(boxes, scale) for boxes, scale in zip(given_boxes, batch.scales)]
            predictions = self.roi_heads(features, rois)
        outputs = self._per_image_outputs(rois, predictions, batch.scales, keep_all=given_boxes is not None)
        for output, boxes in zip(outputs, given_boxes or []):
            output.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # exactly as given, no rescaling error
        return outputs

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp_dtype and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=AMP_TORCH_DTYPES[self.config.amp_dtype])
        return contextlib.nullcontext()

    def _scaled_boxes(self, boxes: np.ndarray, scale: float) -> torch.Tensor:
        array = np.asarray(boxes, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != 4 or not np.isfinite(array).all():
            raise ValueError(f"given boxes must be a finite (n, 4) x1y1x2y2 array, got shape {array.shape}")
        if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
            raise ValueError("given boxes must have x2 >= x1 and y2 >= y1")
        return torch.from_numpy(array).to(self.device) * scale

    def _per_image_outputs(self, rois: list[torch.Tensor], predictions: RegionPredictions,
                           scales: list[float], keep_all: bool) -> list[DetectorOutput]:
        outputs = []
        counts = [len(r) for r in rois]
        parts = zip(rois, predictions.features.split(counts), predictions.class_probs.split(counts),
                    predictions.attr_probs.split(counts), scales)
        for boxes, features, class_probs, attr_probs, scale in parts:
            keep = torch.arange(len(boxes), device=boxes.device) if keep_all else self._select(boxes, class_probs)
            outputs.append(_describe(boxes[keep].float() / scale, features[keep], class_probs[keep], attr_probs[keep]))
        return outputs

    def _select(self, boxes: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
        c = self.config
        return select_regions(boxes, class_probs, conf_thresh=c.conf_thresh, nms_thresh=c.nms_thresh,
                              min_boxes=c.min_boxes, max_boxes=c.max_boxes)


def _describe(boxes: torch.Tensor, features: torch.Tensor, class_probs: torch.Tensor, attr_probs: torch.Tensor) -> DetectorOutput:
    """Best foreground class and best real attribute per region (index 0 = background / none dropped)."""
    object_conf, object_ids = class_probs[:, 1:].max(dim=1)
    attr_conf, attr_ids = attr_probs[:, 1:].max(dim=1)
    object_ids, attr_ids = object_ids + 1, attr_ids + 1
    return DetectorOutput(
        boxes=boxes.cpu().numpy().astype(np.float32),
        features=features.cpu().numpy().astype(np.float32),
        object_ids=object_ids.cpu().numpy().astype(np.int64),
        object_conf=object_conf.cpu().numpy().astype(np.float32),
        attr_ids=attr_ids.cpu().numpy().astype(np.int64),
        attr_conf=attr_conf.cpu().numpy().astype(np.float32),
    )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_detector(config: ExtractorConfig) -> BottomUpDetector:
    """Eval-mode detector on `config.device`, with `config.weights` loaded or a seeded random init."""
    with _seeded(config.seed):
        model = BottomUpDetector(config)
    if config.weights:
        load_weights(model, config)
    return model.to(resolve_device(config.device)).eval()
