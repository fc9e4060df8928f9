"""ResNet C4 body (stem .. res4) and the res5 box head, Caffe style.

Caffe style: 7x7 stem then a 3x3 max pool with ceil rounding, frozen batch norm, and the
stride of a bottleneck block in its first 1x1 conv. Module names follow detectron2
(`stem.conv1.norm.weight`, `res4.22.conv3.weight`, ...) so published weights map on by name.

Batches are zero-padded to a common size; every conv's input is re-zeroed outside each
image's valid area, so an image gives the same features alone or in a padded batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from extractors.config import BackboneSpec

Sizes = list[tuple[int, int]]


class ConvNorm(nn.Conv2d):
    """Bias-free conv followed by its frozen batch norm, stored as `<name>.norm.*`.

    `fuse()` folds the norm into a conv weight and bias kept beside the stored ones (non-persistent, so
    state dicts and weight files keep the published layout): one pass over the activations instead of
    two, and under bf16 autocast the output stays bf16 (the float32 norm would promote it to float32).
    Loading a state dict drops the fused copy, so it never goes stale.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels)
        self.register_buffer("fused_weight", None, persistent=False)
        self.register_buffer("fused_bias", None, persistent=False)
        self.register_load_state_dict_post_hook(_drop_fused)

    def fuse(self) -> None:
        """Fold the frozen norm (y = x * scale + shift) into the conv: w * scale, bias = shift."""
        with torch.no_grad():
            scale = self.norm.weight * (self.norm.running_var + self.norm.eps).rsqrt()
            self.fused_weight = self.weight * scale.view(-1, 1, 1, 1)
            self.fused_bias = self.norm.bias - self.norm.running_mean * scale

    def unfuse(self) -> None:
        self.fused_weight = self.fused_bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_weight is not None:
            return self._conv_forward(x, self.fused_weight, self.fused_bias)
        return self.norm(super().forward(x))

    def output_size(self, size: int) -> int:
        span = self.dilation[0] * (self.kernel_size[0] - 1) + 1
        return (size + 2 * self.padding[0] - span) // self.stride[0] + 1


def _drop_fused(module: ConvNorm, incompatible_keys: object) -> None:
    del incompatible_keys
    module.unfuse()


def fuse_norms(module: nn.Module) -> nn.Module:
    """Fold every frozen norm under `module` into its conv (see ConvNorm.fuse); returns `module`."""
    for child in module.modules():
        if isinstance(child, ConvNorm):
            child.fuse()
    return module


def zero_padding(x: torch.Tensor, sizes: Sizes | None) -> torch.Tensor:
    """Zero `x` (B, C, H, W) outside each image's valid (h, w); a no-op without padding."""
    if sizes is None or all(h == x.shape[2] and w == x.shape[3] for h, w in sizes):
        return x
    mask = torch.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
    for index, (h, w) in enumerate(sizes):
        mask[index, :, :h, :w] = 1
    return x * mask


def masked_conv(conv: ConvNorm, x: torch.Tensor, sizes: Sizes | None) -> tuple[torch.Tensor, Sizes | None]:
    """Apply `conv` to the zero-padded input; return the output and its valid sizes."""
    out = conv(zero_padding(x, sizes))
    if sizes is None:
        return out, None
    return out, [(conv.output_size(h), conv.output_size(w)) for h, w in sizes]


class BottleneckBlock(nn.Module):
    """1x1 (strided, Caffe) -> 3x3 (dilated) -> 1x1, with a projection shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.shortcut = ConvNorm(in_channels, out_channels, 1, stride) if in_channels != out_channels else None
        self.conv1 = ConvNorm(in_channels, bottleneck, 1, stride)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, 1, padding=dilation, dilation=dilation)
        self.conv3 = ConvNorm(bottleneck, out_channels, 1)

    def forward(self, x: torch.Tensor, sizes: Sizes | None) -> tuple[torch.Tensor, Sizes | None]:
        out, out_sizes = masked_conv(self.conv1, x, sizes)
        out, out_sizes = masked_conv(self.conv2, F.relu(out), out_sizes)
        out, out_sizes = masked_conv(self.conv3, F.relu(out), out_sizes)
        shortcut = x if self.shortcut is None else masked_conv(self.shortcut, x, sizes)[0]
        return F.relu(out + shortcut), out_sizes

    def output_size(self, size: int) -> int:
        return self.conv3.output_size(self.conv2.output_size(self.conv1.output_size(size)))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34), with a projection shortcut when shape changes."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck: int, stride: int, dilation: int) -> None:
        super().__init__()
        del bottleneck  # basic blocks have no bottleneck width
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = ConvNorm(in_channels, out_channels, 1, stride) if needs_projection else None
        self.conv1 = ConvNorm(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation)
        self.conv2 = ConvNorm(out_channels, out_channels, 3, 1, padding=dilation, dilation=dilation)

    def forward(self, x: torch.Tensor, sizes: Sizes | None) -> tuple[torch.Tensor, Sizes | None]:
        out, out_sizes = masked_conv(self.conv1, x, sizes)
        out, out_sizes = masked_conv(self.conv2, F.relu(out), out_sizes)
        shortcut = x if self.shortcut is None else masked_conv(self.shortcut, x, sizes)[0]
        return F.relu(out + shortcut), out_sizes

    def output_size(self, size: int) -> int:
        return self.conv2.output_size(self.conv1.output_size(size))


class Stage(nn.Sequential):
    """A run of residual blocks that carries the valid sizes along."""

    def forward(self, x: torch.Tensor, sizes: Sizes | None = None) -> tuple[torch.Tensor, Sizes | None]:  # type: ignore[override]
        for block in self:
            x, sizes = block(x, sizes)
        return x, sizes

    def output_size(self, size: int) -> int:
        for block in self:
            size = block.output_size(size)
        return size


def make_stage(spec: BackboneSpec, stage: int) -> Stage:
    """Stage `stage` in 2..5 of the ResNet described by `spec`."""
    factor = 2 ** (stage - 2)
    out_channels = spec.res2_channels * factor
    in_channels = 64 if stage == 2 else out_channels // 2
    dilation = spec.res5_dilation if stage == 5 else 1
    first_stride = 1 if stage == 2 or dilation > 1 else 2
    block_class = BottleneckBlock if spec.block == "bottleneck" else BasicBlock
    blocks = []
    for index in range(spec.stage_blocks[stage - 2]):
        blocks.append(block_class(in_channels, out_channels, 64 * factor, first_stride if index == 0 else 1, dilation))
        in_channels = out_channels
    return Stage(*blocks)


class Stem(nn.Module):
    """7x7/2 conv, ReLU, 3x3/2 max pool rounding up (Caffe), i.e. stride 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, 64, 7, 2, padding=3)

    def forward(self, x: torch.Tensor, sizes: Sizes | None) -> tuple[torch.Tensor, Sizes | None]:
        out, out_sizes = masked_conv(self.conv1, x, sizes)
        # Zeroed padding cannot win the max over ReLU outputs, as with no padding at all.
        out = F.max_pool2d(zero_padding(F.relu(out), out_sizes), kernel_size=3, stride=2, padding=0, ceil_mode=True)
        if out_sizes is not None:
            out_sizes = [(_pooled(h), _pooled(w)) for h, w in out_sizes]
        return out, out_sizes

    def output_size(self, size: int) -> int:
        return _pooled(self.conv1.output_size(size))


def _pooled(size: int) -> int:
    return max(1, math.ceil((size - 3) / 2) + 1)


class ResNetC4(nn.Module):
    """Stem .. res4: images (B, 3, H, W) -> res4 (B, C4, ~H/16, ~W/16), padding zeroed."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.stem = Stem()
        self.res2 = make_stage(spec, 2)
        self.res3 = make_stage(spec, 3)
        self.res4 = make_stage(spec, 4)
        self.out_channels = spec.res2_channels * 4

    def forward(self, images: torch.Tensor, image_sizes: Sizes) -> tuple[torch.Tensor, Sizes]:
        x, sizes = self.stem(images, list(image_sizes))
        for stage in (self.res2, self.res3, self.res4):
            x, sizes = stage(x, sizes)
        assert sizes is not None
        return zero_padding(x, sizes), sizes

    def output_sizes(self, sizes: Sizes) -> Sizes:
        """The valid res4 (h, w) of images of these sizes, as forward returns them, without running anything."""
        parts = (self.stem, self.res2, self.res3, self.res4)
        out = []
        for h, w in sizes:
            for part in parts:
                h, w = part.output_size(h), part.output_size(w)
            out.append((h, w))
        return out
