"""Caption/region pairs for SCAN, read lazily so COCO-sized feature files never sit in memory.

A region source is anything with ``__len__``, ``image_ids`` and ``read(indices)``; the HDF5
feature store (pipeline.store.StoreReader) and SCAN's precomp ``.npy`` files both qualify.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from pipeline.datasets.checks import CAPTIONS_PER_EVAL_IMAGE
from pipeline.errors import InputError

CAPTIONS_PER_IMAGE = CAPTIONS_PER_EVAL_IMAGE  # the reference protocol: caption j belongs to image j // 5


@runtime_checkable
class RegionSource(Protocol):
    """Per-image region features, addressed by position 0..len-1."""

    def __len__(self) -> int: ...

    @property
    def image_ids(self) -> Sequence[str]: ...

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (B, K, D) float32 and num_boxes (B,) int64."""
        ...


class PrecompFeatures:
    """SCAN's ``{split}_ims.npy`` (N, K, D), memory-mapped: only the rows asked for are read.

    Every image has all K regions (the reference uses 36 fixed boxes), so num_boxes is K.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputError(self.path, f"not a readable .npy array ({error})") from error
        if self._array.ndim != 3:
            raise InputError(self.path, f"expected (images, regions, dim) features, got shape {self._array.shape}")

    def __len__(self) -> int:
        return int(self._array.shape[0])

    @property
    def image_ids(self) -> list[str]:
        return [str(i) for i in range(len(self))]

    @property
    def feature_dim(self) -> int:
        return int(self._array.shape[2])

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(indices, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"image index out of range 0..{len(self) - 1} in {self.path}")
        features = np.asarray(self._array[np.sort(positions)], dtype=np.float32)
        features = features[np.argsort(np.argsort(positions, kind="stable"), kind="stable")]
        return features, np.full(len(positions), self._array.shape[1], dtype=np.int64)


@dataclass(frozen=True)
class CaptionBatch:
    """One collated batch, sorted by caption length (longest first), as the reference's collate.

    images (B, K, D) float32, image_lens (B,), captions (B, W) long zero-padded, lengths (B,),
    caption_index (B,) positions in the caption list, image_index (B,) positions in the source.
    """

    images: Tensor
    image_lens: Tensor
    captions: Tensor
    lengths: Tensor
    caption_index: Tensor
    image_index: Tensor


def pad_captions(token_ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Zero-padded (B, W) long tensor (W = longest caption) and lengths (B,)."""
    lengths = torch.tensor([len(ids) for ids in token_ids], dtype=torch.long)
    padded = torch.zeros(len(token_ids), int(lengths.max()) if len(token_ids) else 0, dtype=torch.long)
    for row, ids in enumerate(token_ids):
        padded[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    return padded, lengths


class CaptionPairs(torch.utils.data.Dataset):
    """Caption i paired with the regions of image ``image_index[i]``; indexed by whole batches.

    ``dataset[list_of_caption_positions]`` returns a collated CaptionBatch, so features are read
    once per batch (grouped reads in the feature store) and a DataLoader uses ``batch_size=None``.
    """

    def __init__(self, regions: RegionSource, captions: Sequence[Sequence[int]],
                 image_index: Sequence[int] | np.ndarray) -> None:
        self.regions = regions
        self.captions = captions
        self.image_index = np.asarray(image_index, dtype=np.int64)
        if len(self.image_index) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(self.image_index)} image indices")
        if len(captions) and (self.image_index.min() < 0 or self.image_index.max() >= len(regions)):
            raise ValueError(f"image indices must lie in 0..{len(regions) - 1}")
        if any(len(ids) == 0 for ids in captions):
            raise ValueError("empty caption (expected at least <start> and <end> tokens)")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, positions: Sequence[int]) -> CaptionBatch:
        order = sorted(positions, key=lambda i: len(self.captions[i]), reverse=True)
        image_index = self.image_index[order]
        features, num_boxes = self.regions.read(image_index)
        captions, lengths = pad_captions([self.captions[i] for i in order])
        return CaptionBatch(torch.from_numpy(features), torch.from_numpy(np.asarray(num_boxes, dtype=np.int64)),
                            captions, lengths, torch.as_tensor(order, dtype=torch.long),
                            torch.from_numpy(image_index))


def image_index_for_captions(n_images: int, n_captions: int, *, source: str | PathLike[str]) -> np.ndarray:
    """The reference's pairing: caption i -> image i // 5 (or i when there is one caption per image)."""
    if n_captions == n_images * CAPTIONS_PER_IMAGE:
        return np.arange(n_captions, dtype=np.int64) // CAPTIONS_PER_IMAGE
    if n_captions == n_images:
        return np.arange(n_captions, dtype=np.int64)
    raise InputError(source, f"{n_captions} captions for {n_images} images; expected 5 per image (or 1)")


class FirstImages:
    """The first n images of a region source (a RegionSource itself)."""

    def __init__(self, regions: RegionSource, n_images: int) -> None:
        self.regions, self.n_images = regions, min(n_images, len(regions))

    def __len__(self) -> int:
        return self.n_images

    @property
    def image_ids(self) -> Sequence[str]:
        return list(self.regions.image_ids[: self.n_images])

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(indices, dtype=np.int64)
        if positions.size and positions.max() >= self.n_images:
            raise IndexError(f"image index out of range 0..{self.n_images - 1}")
        return self.regions.read(positions)


def first_images(pairs: CaptionPairs, n_images: int) -> CaptionPairs:
    """Only the first n images and their captions: the reference validates on the first 5000 dev
    captions (1000 images), which keeps per-epoch validation cheap on COCO's 5000 dev images."""
    keep = np.flatnonzero(pairs.image_index < n_images)
    return CaptionPairs(FirstImages(pairs.regions, n_images), [pairs.captions[i] for i in keep],
                        pairs.image_index[keep])
