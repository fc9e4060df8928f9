"""What every dataset reader produces: one record per image, the split it belongs to, its captions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "dev", "test")
# Source split names -> ours, as SCAN uses them: Karpathy's "val" is SCAN's dev set and COCO's
# "restval" images are added to training.
SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "dev", "dev": "dev", "test": "test"}
# Karpathy-style files may mark images that belong to no split (the Flickr8k images outside the
# official lists); they are skipped and recorded, not an error.
NO_SPLIT = "none"


@dataclass(frozen=True)
class ImageRecord:
    """One image and its captions; `path` is absolute and confined under the dataset's image root."""

    image_id: str
    path: Path
    relpath: str
    split: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Skipped:
    """An entry of the source left out on purpose (no split, empty caption, absent image), and why."""

    source: Path
    location: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    """A named dataset read from its captions/split file; images in source order."""

    name: str
    image_root: Path
    images: tuple[ImageRecord, ...]
    source: Path
    boxes_file: Path | None = None
    skipped: tuple[Skipped, ...] = field(default=(), compare=False)

    def split(self, name: str) -> tuple[ImageRecord, ...]:
        """The images of one split ("train" | "dev" | "test"), in source order."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return tuple(image for image in self.images if image.split == name)
