"""Optional second implementation of the backbone and box head from detectron2's own modules.

It exists to cross-check the plain-PyTorch detector where detectron2 is installed (it is not
a dependency): the same weights must give the same res4 map and pooled region features.
detectron2 has no dilated BasicBlock, so only the bottleneck presets (R50, R101) are built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from extractors.config import BackboneSpec
from extractors.rpn import FEATURE_STRIDE

try:
    from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes
except ImportError as error:  # the native detector never needs it
    DETECTRON2_ERROR: str | None = f"detectron2 is not importable ({error}); the native detector does not need it"
else:
    DETECTRON2_ERROR = None


def _caffe_stem() -> nn.Module:
    class CaffeMaxPoolStem(BasicStem):
        """detectron2's stem with Caffe's unpadded, ceil-rounded max pool."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=0, ceil_mode=True)

    return CaffeMaxPoolStem(in_channels=3, out_channels=64, norm="FrozenBN")


def _stage(spec: BackboneSpec, stage: int) -> list[nn.Module]:
    factor = 2 ** (stage - 2)
    dilation = spec.res5_dilation if stage == 5 else 1
    first_stride = 1 if stage == 2 or dilation > 1 else 2
    blocks = spec.stage_blocks[stage - 2]
    return ResNet.make_stage(
        BottleneckBlock, blocks, in_channels=64 if stage == 2 else spec.res2_channels * factor // 2,
        out_channels=spec.res2_channels * factor, bottleneck_channels=64 * factor, num_groups=1, norm="FrozenBN",
        stride_in_1x1=True, dilation=dilation, stride_per_block=[first_stride] + [1] * (blocks - 1))


class Detectron2RegionFeatures(nn.Module):
    """images (B, 3, H, W) + per-image boxes (resized pixels) -> res4 map, pooled features (R, D)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        if DETECTRON2_ERROR is not None:
            raise RuntimeError(DETECTRON2_ERROR)
        if spec.block != "bottleneck":
            raise ValueError("the detectron2 backend builds bottleneck presets (R50, R101) only")
        self.backbone = ResNet(_caffe_stem(), [_stage(spec, s) for s in (2, 3, 4)], out_features=["res4"])
        self.pooler = ROIPooler(output_size=spec.pooler_resolution, scales=(1.0 / FEATURE_STRIDE,),
                                sampling_ratio=0, pooler_type="ROIPool")
        self.res5 = nn.Sequential(*_stage(spec, 5))

    def load_native(self, native_state: dict[str, torch.Tensor]) -> None:
        """Take the backbone and res5 weights of a BottomUpDetector state dict (same names)."""
        backbone = {k[len("backbone."):]: v for k, v in native_state.items() if k.startswith("backbone.")}
        res5 = {k[len("roi_heads.res5."):]: v for k, v in native_state.items() if k.startswith("roi_heads.res5.")}
        self.backbone.load_state_dict(backbone, strict=True)
        self.res5.load_state_dict(res5, strict=True)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        res4 = self.backbone(images)["res4"]
        crops = self.pooler([res4], [Boxes(b.float()) for b in boxes])
        return res4, self.res5(crops).mean(dim=(2, 3))
