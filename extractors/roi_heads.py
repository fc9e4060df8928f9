"""Box head of the C4 detector: ROI max pooling at 1/16, res5, mean pool, class/box/attribute heads.

Internal layout (Caffe's): class 0 is background and class i + 1 is line i of
objects_vocab.txt; attribute 0 is "no attribute" and attribute j + 1 is line j of
attributes_vocab.txt. Box regression is class-specific for the foreground classes only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_pool

from extractors.backbone import make_stage
from extractors.config import BackboneSpec
from extractors.rpn import FEATURE_STRIDE


@dataclass
class RegionPredictions:
    """Per-region outputs for R regions: features (R, D), class_probs (R, C + 1), attr_probs (R, A + 1)."""

    features: torch.Tensor
    class_probs: torch.Tensor
    attr_probs: torch.Tensor


class BoxPredictor(nn.Module):
    """Classifier, box regressor and the attribute head fed with the argmax class embedding."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        dim = spec.feature_dim
        self.cls_score = nn.Linear(dim, spec.num_classes + 1)
        self.bbox_pred = nn.Linear(dim, spec.num_classes * 4)
        self.cls_embedding = nn.Embedding(spec.num_classes + 1, spec.attr_embed_dim)
        self.attr_linear1 = nn.Linear(dim + spec.attr_embed_dim, spec.attr_hidden_dim)
        self.attr_linear2 = nn.Linear(spec.attr_hidden_dim, spec.num_attributes + 1)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, D) -> class logits (R, C + 1), attribute logits (R, A + 1)."""
        class_logits = self.cls_score(pooled)
        embedded = self.cls_embedding(class_logits.argmax(dim=1))
        hidden = F.relu(self.attr_linear1(torch.cat([pooled, embedded.to(pooled.dtype)], dim=1)))
        return class_logits, self.attr_linear2(hidden)


class Res5ROIHeads(nn.Module):
    """res4 (B, C4, Hf, Wf) + per-image boxes in resized-image pixels -> RegionPredictions."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.pooler_resolution = spec.pooler_resolution
        self.res5 = make_stage(spec, 5)
        self.box_predictor = BoxPredictor(spec)

    def forward(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> RegionPredictions:
        # Pool in float32 even under autocast: half-precision box corners lose whole pixels.
        rois = [b.float() for b in boxes]
        crops = roi_pool(features.float(), rois, output_size=self.pooler_resolution, spatial_scale=1.0 / FEATURE_STRIDE)
        pooled = self.res5(crops)[0].mean(dim=(2, 3))
        class_logits, attr_logits = self.box_predictor(pooled)
        return RegionPredictions(
            features=pooled.float(),
            class_probs=F.softmax(class_logits.float(), dim=1),
            attr_probs=F.softmax(attr_logits.float(), dim=1),
        )
