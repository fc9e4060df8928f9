"""Box head of the C4 detector: ROI max pooling at 1/16, res5, mean pool, class/box/attribute heads.

Internal layout (Caffe's order, detectron2's names as in py-bottom-up-attention's
`FastRCNNOutputLayers`): class 0 is background and class i + 1 is line i of objects_vocab.txt;
attribute 0 is "no attribute" and attribute j + 1 is line j of attributes_vocab.txt. Box
regression is class-specific for the foreground classes only, in Caffe's units (deltas applied
with weights 1). The attribute head is optional: the attribute-free published files have none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_pool

from extractors.backbone import make_stage
from extractors.config import CPU_ROI_BATCH, GPU_ROI_BATCH, BackboneSpec
from extractors.rpn import FEATURE_STRIDE

ATTRIBUTE_MODULES = ("cls_embedding", "fc_attr", "attr_score")
Res5Mean = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RegionPredictions:
    """Per-region outputs for R regions: features (R, D), class_probs (R, C + 1), attr_logits (R, A + 1)
    or None without an attribute head, box_deltas (R, 4C) when asked for."""

    features: torch.Tensor
    class_probs: torch.Tensor
    attr_logits: Optional[torch.Tensor]
    box_deltas: Optional[torch.Tensor] = None


class BoxPredictor(nn.Module):
    """Classifier, box regressor and (optionally) the attribute head fed with the argmax class embedding."""

    def __init__(self, spec: BackboneSpec, with_attributes: bool = True) -> None:
        super().__init__()
        dim = spec.feature_dim
        self.cls_score = nn.Linear(dim, spec.num_classes + 1)
        self.bbox_pred = nn.Linear(dim, spec.num_classes * 4)
        self.with_attributes = with_attributes
        if with_attributes:
            self.cls_embedding = nn.Embedding(spec.num_classes + 1, spec.attr_embed_dim)
            self.fc_attr = nn.Linear(dim + spec.attr_embed_dim, spec.attr_hidden_dim)
            self.attr_score = nn.Linear(spec.attr_hidden_dim, spec.num_attributes + 1)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(R, D) -> class logits (R, C + 1), attribute logits (R, A + 1) or None."""
        class_logits = self.cls_score(pooled)
        if not self.with_attributes:
            return class_logits, None
        embedded = self.cls_embedding(class_logits.argmax(dim=1))
        hidden = F.relu(self.fc_attr(torch.cat([pooled, embedded.to(pooled.dtype)], dim=1)))
        return class_logits, self.attr_score(hidden)


class Res5ROIHeads(nn.Module):
    """res4 (B, C4, Hf, Wf) + per-image boxes in resized-image pixels -> RegionPredictions.

    Proposals go through ROI pooling and res5 `roi_batch` at a time (0: CPU_ROI_BATCH on the CPU,
    GPU_ROI_BATCH on a GPU): on the CPU a few proposals' activations stay in the cache, where 300 at once
    (1 GB of res5 activations) stream through memory; on a GPU the cap bounds memory at batch 32.
    The features differ only at float32 rounding.
    """

    def __init__(self, spec: BackboneSpec, with_attributes: bool = True, roi_batch: int = 0) -> None:
        super().__init__()
        self.pooler_resolution = spec.pooler_resolution
        self.roi_batch = roi_batch
        self.res5 = make_stage(spec, 5)
        self.box_predictor = BoxPredictor(spec, with_attributes)

    def forward(self, features: torch.Tensor, boxes: list[torch.Tensor], box_deltas: bool = False,
                res5_mean: Optional[Res5Mean] = None) -> RegionPredictions:
        """`res5_mean` runs res5 and the mean over space elsewhere (extractors.onnx_runtime); default: here."""
        pooled = self.pooled_features(features, boxes, res5_mean)
        class_logits, attr_logits = self.box_predictor(pooled)
        return RegionPredictions(
            features=pooled.float(),
            class_probs=F.softmax(class_logits.float(), dim=1),
            attr_logits=None if attr_logits is None else attr_logits.float(),
            box_deltas=self.box_predictor.bbox_pred(pooled).float() if box_deltas else None,
        )

    def pooled_features(self, features: torch.Tensor, boxes: list[torch.Tensor],
                        res5_mean: Optional[Res5Mean] = None) -> torch.Tensor:
        """res5 outputs averaged over space, (R, D), for the boxes of every image in order."""
        res5_mean = res5_mean or self.res5_mean
        # Pool in float32 even under autocast: half-precision box corners lose whole pixels.
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(index), device=b.device), b.float()], dim=1)
                          for index, b in enumerate(boxes)])
        step = self.roi_batch or (GPU_ROI_BATCH if features.device.type == "cuda" else CPU_ROI_BATCH)
        features = features.float()
        parts = [res5_mean(roi_pool(features, chunk, output_size=self.pooler_resolution,
                                    spatial_scale=1.0 / FEATURE_STRIDE))
                 for chunk in rois.split(step)]
        return torch.cat(parts)

    def res5_mean(self, pooled_rois: torch.Tensor) -> torch.Tensor:
        return res5_spatial_mean(self.res5, pooled_rois)


def res5_spatial_mean(res5: nn.Module, pooled_rois: torch.Tensor) -> torch.Tensor:
    """ROI-pooled res4 (n, C4, P, P) -> res5 averaged over space, (n, D), in float32."""
    return res5(pooled_rois)[0].float().mean(dim=(2, 3))
