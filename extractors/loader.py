"""Decode and prepare images in DataLoader workers, so the detector never waits on JPEG decoding.

Each batch arrives collated (resized, normalised, padded) together with the images that could
not be read; a bad file becomes a recorded failure, not an exception, unless `fail_fast`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

import cv2
import numpy as np
from torch.utils.data import DataLoader, Dataset

from extractors.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, BadImageError, decode_image
from extractors.preprocess import collate_images, prepare_image
from pipeline.errors import InputError


class ImageFile(NamedTuple):
    """One image to extract: its id, absolute path, and path relative to the dataset root.

    `pipeline.datasets.ImageRecord` has the same three attributes and can be passed instead.
    """

    image_id: str
    path: Path
    relpath: str


class Failure(NamedTuple):
    """An image that could not be read, and why (the BadImageError's problem)."""

    image: ImageFile
    reason: str


@dataclass
class LoadedBatch:
    """A collated batch of the readable images, in input order, and the failures among them.

    `batch` is the detector's ImageBatch (None if every image of the batch failed);
    `boxes` holds the given boxes per image (original pixels, (K, 4)) in given-boxes mode.
    """

    images: list[ImageFile]
    batch: Any
    failures: list[Failure]
    boxes: Optional[list[np.ndarray]] = None


def images_in_directory(root: str | PathLike[str]) -> list[ImageFile]:
    """Every image file under `root` (recursive, sorted); its id is the relative path minus suffix."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(root, "not a directory of images")
    files = sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir())
    images = [ImageFile(path.relative_to(root).with_suffix("").as_posix(), path, path.relative_to(root).as_posix())
              for path in files]
    seen: dict[str, str] = {}
    for image in images:
        if image.image_id in seen:
            raise InputError(root, f"{seen[image.image_id]!r} and {image.relpath!r} would share the image id "
                                   f"{image.image_id!r}; rename one of them")
        seen[image.image_id] = image.relpath
    if not images:
        raise InputError(root, f"no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return images


class _PreparedImages(Dataset):
    """Item i: (i, PreparedImage or None, failure reason or None); runs inside DataLoader workers."""

    def __init__(self, images: Sequence[ImageFile], config: Any, max_pixels: int) -> None:
        self.images, self.config, self.max_pixels = list(images), config, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, Any, Optional[str]]:
        try:
            pixels = decode_image(self.images[index].path, max_pixels=self.max_pixels)
            return index, prepare_image(pixels, self.config), None
        except InputError as error:
            return index, None, error.problem


class _Collate:
    """Split a list of items into the readable ones (collated by the detector's rules) and failures."""

    def __init__(self, images: Sequence[ImageFile], boxes: Optional[Mapping[str, np.ndarray]], max_boxes: int) -> None:
        self.images, self.boxes, self.max_boxes = images, boxes, max_boxes

    def __call__(self, items: list[tuple[int, Any, Optional[str]]]) -> LoadedBatch:
        items = [(index, prepared, reason or self._too_many_boxes(index)) for index, prepared, reason in items]
        good = [(index, prepared) for index, prepared, reason in items if reason is None]
        failures = [Failure(self.images[index], reason) for index, _, reason in items if reason is not None]
        kept = [self.images[index] for index, _ in good]
        boxes = None if self.boxes is None else [self.boxes[image.image_id] for image in kept]
        batch = collate_images([prepared for _, prepared in good]) if good else None
        return LoadedBatch(kept, batch, failures, boxes)

    def _too_many_boxes(self, index: int) -> Optional[str]:
        """Given boxes beyond the store's K cannot be stored: that image fails, the others go on."""
        count = 0 if self.boxes is None else len(self.boxes[self.images[index].image_id])
        return f"{count} given boxes, more than max_boxes={self.max_boxes}" if count > self.max_boxes else None


def load_batches(images: Sequence[ImageFile], config: Any, *, batch_size: int, num_workers: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, fail_fast: bool = False,
                 boxes: Optional[Mapping[str, np.ndarray]] = None) -> Iterator[LoadedBatch]:
    """Batches of `batch_size` consecutive images, prepared with `config` (an ExtractorConfig).

    Batches are formed from the input order alone, never from timing, so the same images give
    the same padded batches and hence the same features on every run. With `fail_fast`, the
    first unreadable image raises its BadImageError here, in the calling process.
    """
    images = [ImageFile(image.image_id, Path(image.path), image.relpath) for image in images]
    if boxes is not None:
        missing = [image.image_id for image in images if image.image_id not in boxes]
        if missing:
            raise ValueError(f"given-boxes mode: {len(missing)} images have no boxes (first: {missing[0]!r})")
    loader = DataLoader(_PreparedImages(images, config, max_pixels), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_Collate(images, boxes, config.max_boxes),
                        prefetch_factor=2 if num_workers else None)
    with _no_opencv_thread_pool(num_workers > 0):
        for loaded in loader:
            if fail_fast and loaded.failures:
                first = loaded.failures[0]
                raise BadImageError(first.image.path, first.reason)
            yield loaded


@contextlib.contextmanager
def _no_opencv_thread_pool(active: bool) -> Iterator[None]:
    """Single-threaded OpenCV while workers are forked: a forked child inherits OpenCV's thread pool
    without its threads and hangs on first use; each worker is a process of its own anyway."""
    previous = cv2.getNumThreads()
    if active:
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        if active:
            cv2.setNumThreads(previous)
