"""The bottom-up-attention detector: ResNet C4 + RPN + res5 box head + region selection.

`build_detector(config)` is the one entry point; its output per image is what the feature
store records (boxes in original-image pixels, pooled res5 features, class and attribute).
`config.recipe` picks how proposals and regions are computed around the same network
(rpn.py, regions.py); the attribute head exists only when the weights have one.
`config.int8_calibration` runs res5 in int8 on ONNX Runtime, calibrated on those photos' proposals
when the detector first runs (extractors.onnx_runtime).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from extractors.backbone import ResNetC4, fuse_norms
from extractors.calibration import calibration_photos
from extractors.config import ExtractorConfig
from extractors.images import decode_image
from extractors.onnx_runtime import OnnxParts
from extractors.precision import autocast
from extractors.preprocess import ImageBatch, collate_images, prepare_image
from extractors.regions import REGION_RULES, DetectorOutput, ImageRegions, describe
from extractors.roi_heads import RegionPredictions, Res5ROIHeads
from extractors.rpn import ProposalSettings, RegionProposalNetwork
from extractors.timing import StageClock, maybe_stage
from extractors.weights import load_converted, read_weights
from pipeline.devices import resolve_device

__all__ = ["BottomUpDetector", "DetectorOutput", "build_detector"]

class BottomUpDetector(nn.Module):
    """Faster R-CNN C4 with (optionally) attributes; module names match the published detectron2 ports."""

    def __init__(self, config: ExtractorConfig, with_attributes: bool = True) -> None:
        super().__init__()
        spec = config.spec
        self.config = config
        self.backbone = ResNetC4(spec)
        settings = ProposalSettings(pre_nms_topk=config.rpn_pre_nms_topk, post_nms_topk=config.rpn_post_nms_topk,
                                    nms_thresh=config.rpn_nms_thresh, min_size=config.rpn_min_size)
        self.proposal_generator = RegionProposalNetwork(self.backbone.out_channels, spec, settings, config.recipe)
        self.roi_heads = Res5ROIHeads(spec, with_attributes, config.roi_batch_size)
        self._onnx: OnnxParts | None = None  # made at the first forward with runtime=onnxruntime
        self._res5_int8: bytes | None = None  # res5 quantized from the current weights (int8_calibration)
        self.register_load_state_dict_post_hook(_drop_onnx_parts)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def with_attributes(self) -> bool:
        return self.roi_heads.box_predictor.with_attributes

    def forward(self, batch: ImageBatch, given_boxes: list[np.ndarray] | None = None,
                clock: StageClock | None = None) -> list[DetectorOutput]:
        """Detect and select regions, or (given_boxes: per image (n, 4) original pixels) describe those boxes.

        `clock` (benchmarks) collects the seconds of each stage: backbone, rpn, res5 head, selection.
        """
        if given_boxes is not None and len(given_boxes) != len(batch.image_sizes):
            raise ValueError(f"given_boxes has {len(given_boxes)} entries for a batch of "
                             f"{len(batch.image_sizes)} images")
        onnx = self._onnx_parts() if self.config.runtime == "onnxruntime" else None
        with torch.inference_mode(), autocast(self.config.amp_dtype, self.device):
            with maybe_stage(clock, "backbone"):
                body = onnx.body if onnx is not None else self.backbone
                features, feature_sizes = body(batch.images.to(self.device), batch.image_sizes)
            with maybe_stage(clock, "rpn"):
                if given_boxes is None:
                    rois = self.proposal_generator(features, feature_sizes, batch.image_sizes, batch.scales)
                else:
                    rois = [self._scaled_boxes(boxes, box_scale)
                            for boxes, box_scale in zip(given_boxes, batch.box_scales)]
            with maybe_stage(clock, "res5 head"):
                needs_deltas = given_boxes is None and self.config.recipe == "airsplay"
                predictions = self.roi_heads(features, rois, box_deltas=needs_deltas,
                                             res5_mean=onnx.res5_mean if onnx is not None else None)
        with torch.inference_mode(), maybe_stage(clock, "selection"):
            per_image = _split(rois, predictions, batch)
            if given_boxes is None:
                return [REGION_RULES[self.config.recipe](regions, self.config) for regions in per_image]
            return [self._given(regions, boxes) for regions, boxes in zip(per_image, given_boxes)]

    def _onnx_parts(self) -> OnnxParts:
        """The ONNX Runtime sessions for the current weights and thread count, exported on first use
        (and res5 calibrated and quantized, once per weights, with int8 calibration photos)."""
        threads = torch.get_num_threads()
        if self._onnx is None or self._onnx.threads != threads:
            self._onnx = OnnxParts(self.backbone, self.roi_heads, threads, res5_graph=self._res5_int8)
            if self.config.int8_calibration and self._res5_int8 is None:
                self._res5_int8 = self._onnx.quantize_res5(self._calibration_inputs(self._onnx))
        return self._onnx

    def _calibration_inputs(self, onnx: OnnxParts) -> Iterator[np.ndarray]:
        """res5's inputs for the RPN's proposals of each calibration photo, pass by pass, photo by photo.

        Only the inputs matter here, so res5 itself is not run; the calibrator runs it in float32.
        """
        dim = self.config.spec.feature_dim
        for path in calibration_photos(self.config.int8_calibration):
            batch = collate_images([prepare_image(decode_image(path), self.config)])
            passes: list[np.ndarray] = []

            def record(pooled_rois: torch.Tensor) -> torch.Tensor:
                passes.append(pooled_rois.numpy().copy())
                return pooled_rois.new_zeros((len(pooled_rois), dim))

            with torch.inference_mode():
                features, feature_sizes = onnx.body(batch.images, batch.image_sizes)
                rois = self.proposal_generator(features, feature_sizes, batch.image_sizes, batch.scales)
                self.roi_heads.pooled_features(features, rois, res5_mean=record)
            yield from passes

    def _scaled_boxes(self, boxes: np.ndarray, box_scale: tuple[float, float]) -> torch.Tensor:
        array = np.asarray(boxes, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != 4 or not np.isfinite(array).all():
            raise ValueError(f"given boxes must be a finite (n, 4) x1y1x2y2 array, got shape {array.shape}")
        if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
            raise ValueError("given boxes must have x2 >= x1 and y2 >= y1")
        scale_x, scale_y = box_scale
        scale = torch.tensor([scale_x, scale_y, scale_x, scale_y], device=self.device)
        return torch.from_numpy(array).to(self.device) * scale

    def _given(self, regions: ImageRegions, boxes: np.ndarray) -> DetectorOutput:
        """Every given box, in the given order, exactly as given (no rescaling error)."""
        keep = torch.arange(len(regions.proposals), device=regions.proposals.device)
        given = torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        return describe(given, regions, keep, self.config.recipe)


def _drop_onnx_parts(module: BottomUpDetector, incompatible_keys: object) -> None:
    """New weights: sessions exported (or quantized) from the old ones must not run again."""
    del incompatible_keys
    module._onnx = None
    module._res5_int8 = None


def _split(rois: list[torch.Tensor], predictions: RegionPredictions, batch: ImageBatch) -> list[ImageRegions]:
    counts = [len(r) for r in rois]

    def parts(tensor: torch.Tensor | None) -> list:
        return [None] * len(rois) if tensor is None else list(tensor.split(counts))

    return [ImageRegions(proposals, features, probs, attrs, deltas, size, hw, scale)
            for proposals, features, probs, attrs, deltas, size, hw, scale in zip(
                rois, parts(predictions.features), parts(predictions.class_probs), parts(predictions.attr_logits),
                parts(predictions.box_deltas), batch.image_sizes, batch.original_hw, batch.scales)]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_detector(config: ExtractorConfig) -> BottomUpDetector:
    """Eval-mode detector on `config.device`, with `config.weights` loaded or a seeded random init.

    The attribute head is built when the weights have one (always for a random init). Its frozen norms
    are folded into the convs for inference (ConvNorm.fuse; state dicts keep the published layout).
    """
    converted = read_weights(config) if config.weights else None
    with _seeded(config.seed):
        model = BottomUpDetector(config, with_attributes=converted is None or converted.with_attributes)
    if converted is not None:
        load_converted(model, converted, config.backbone)
    return fuse_norms(model).to(resolve_device(config.device)).eval()
