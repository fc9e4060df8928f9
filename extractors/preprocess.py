"""Image preparation as the Caffe bottom-up-attention model expects it, and batch padding.

Mirrors the reference `prep_im_for_blob`: BGR float minus the Caffe pixel means, then one
cv2 bilinear resize so the shorter side is `test_short_side` unless that makes the longer
side exceed `test_max_side`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from extractors.config import CAFFE_PIXEL_MEANS_BGR, ExtractorConfig


@dataclass
class PreparedImage:
    """One network-ready image: `tensor` (3, h, w) float32 BGR minus pixel means."""

    tensor: torch.Tensor
    scale: float
    original_hw: tuple[int, int]


@dataclass
class ImageBatch:
    """Images zero-padded to a common size: `images` (B, 3, Hmax, Wmax)."""

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    scales: list[float]
    original_hw: list[tuple[int, int]]

    def to(self, device: torch.device | str) -> "ImageBatch":
        return ImageBatch(self.images.to(device), self.image_sizes, self.scales, self.original_hw)


def resize_scale(height: int, width: int, short_side: int, max_side: int) -> float:
    """The reference's scale: shorter side to `short_side`, longer side capped at `max_side`."""
    scale = short_side / min(height, width)
    if round(scale * max(height, width)) > max_side:
        scale = max_side / max(height, width)
    return scale


def prepare_image(image_rgb: np.ndarray, config: ExtractorConfig) -> PreparedImage:
    """(H, W, 3) uint8 RGB -> PreparedImage resized for the detector."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image_rgb.shape} dtype {image_rgb.dtype}")
    height, width = image_rgb.shape[:2]
    if min(height, width) < 1:
        raise ValueError(f"empty image of shape {image_rgb.shape}")
    bgr = image_rgb[:, :, ::-1].astype(np.float32) - np.asarray(CAFFE_PIXEL_MEANS_BGR, dtype=np.float32)
    scale = resize_scale(height, width, config.test_short_side, config.test_max_side)
    resized = cv2.resize(bgr, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return PreparedImage(tensor=tensor, scale=scale, original_hw=(height, width))


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
    )
