"""Image preparation as the bottom-up-attention model expects it, and batch padding.

Both recipes give BGR float minus the Caffe pixel means at the size where the shorter side is
`test_short_side` unless that makes the longer side exceed `test_max_side`. They differ in how:
caffe mirrors `prep_im_for_blob` (subtract the means, then one cv2 bilinear resize of the float
image by one scale factor); airsplay mirrors detectron2's `ResizeShortestEdge` (target sizes
rounded per side, Pillow's bilinear resize of the uint8 image, then the means).
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image

from extractors.config import CAFFE_PIXEL_MEANS_BGR, ExtractorConfig


@dataclass
class PreparedImage:
    """One network-ready image: `tensor` (3, h, w) float32 BGR minus pixel means.

    `scale` is the resize factor; `box_scale` the (x, y) factors that take original-image boxes to
    network pixels as the recipe's reference does it: (scale, scale) for caffe, the per-side size
    ratios (new_w / w, new_h / h) for airsplay.
    """

    tensor: torch.Tensor
    scale: float
    original_hw: tuple[int, int]
    box_scale: tuple[float, float]


@dataclass
class ImageBatch:
    """Images zero-padded to a common size: `images` (B, 3, Hmax, Wmax)."""

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    scales: list[float]
    original_hw: list[tuple[int, int]]
    box_scales: list[tuple[float, float]]

    def to(self, device: torch.device | str) -> "ImageBatch":
        return ImageBatch(self.images.to(device), self.image_sizes, self.scales, self.original_hw, self.box_scales)


def resize_scale(height: int, width: int, short_side: int, max_side: int) -> float:
    """The reference's scale: shorter side to `short_side`, longer side capped at `max_side`."""
    scale = short_side / min(height, width)
    if round(scale * max(height, width)) > max_side:
        scale = max_side / max(height, width)
    return scale


def detectron2_resize_hw(height: int, width: int, short_side: int, max_side: int) -> tuple[int, int]:
    """detectron2's `ResizeShortestEdge.get_transform` sizes: scale both sides, cap, round each side half up."""
    scale = short_side / min(height, width)
    new_h, new_w = (short_side, scale * width) if height < width else (scale * height, short_side)
    if max(new_h, new_w) > max_side:
        cap = max_side / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return int(new_h + 0.5), int(new_w + 0.5)


def _minus_means(bgr: np.ndarray) -> np.ndarray:
    return bgr.astype(np.float32) - np.asarray(CAFFE_PIXEL_MEANS_BGR, dtype=np.float32)


def _caffe_resize(image_rgb: np.ndarray, config: ExtractorConfig) -> tuple[np.ndarray, float, tuple[float, float]]:
    height, width = image_rgb.shape[:2]
    scale = resize_scale(height, width, config.test_short_side, config.test_max_side)
    resized = cv2.resize(_minus_means(image_rgb[:, :, ::-1]), None, None, fx=scale, fy=scale,
                         interpolation=cv2.INTER_LINEAR)
    return resized, scale, (scale, scale)


def _pil_resize(image_rgb: np.ndarray, config: ExtractorConfig) -> tuple[np.ndarray, float, tuple[float, float]]:
    height, width = image_rgb.shape[:2]
    new_h, new_w = detectron2_resize_hw(height, width, config.test_short_side, config.test_max_side)
    resized = np.asarray(Image.fromarray(image_rgb).resize((new_w, new_h), Image.BILINEAR))
    return _minus_means(resized[:, :, ::-1]), new_h / height, (new_w / width, new_h / height)


RESIZERS: dict[str, Callable[[np.ndarray, ExtractorConfig], tuple[np.ndarray, float, tuple[float, float]]]] = {
    "caffe": _caffe_resize,
    "airsplay": _pil_resize,
}


def prepare_image(image_rgb: np.ndarray, config: ExtractorConfig) -> PreparedImage:
    """(H, W, 3) uint8 RGB -> PreparedImage resized for the detector as `config.recipe` does it."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image_rgb.shape} dtype {image_rgb.dtype}")
    height, width = image_rgb.shape[:2]
    if min(height, width) < 1:
        raise ValueError(f"empty image of shape {image_rgb.shape}")
    resized, scale, box_scale = RESIZERS[config.recipe](image_rgb, config)
    tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return PreparedImage(tensor=tensor, scale=scale, original_hw=(height, width), box_scale=box_scale)


def collate_images(items: list[PreparedImage]) -> ImageBatch:
    """Zero-pad (after mean subtraction, so padding is the mean colour) to the largest h and w."""
    if not items:
        raise ValueError("collate_images needs at least one image")
    max_h = max(item.tensor.shape[1] for item in items)
    max_w = max(item.tensor.shape[2] for item in items)
    images = torch.zeros((len(items), 3, max_h, max_w), dtype=torch.float32)
    for index, item in enumerate(items):
        _, h, w = item.tensor.shape
        images[index, :, :h, :w] = item.tensor
    return ImageBatch(
        images=images,
        image_sizes=[(int(item.tensor.shape[1]), int(item.tensor.shape[2])) for item in items],
        scales=[item.scale for item in items],
        original_hw=[item.original_hw for item in items],
        box_scales=[item.box_scale for item in items],
    )
