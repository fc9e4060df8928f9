"""The photos that calibrate res5 in int8, and their identity in a store's key.

Static int8 fixes each activation's range from calibration photos, so the features depend on them:
a store records the photos by content (their digest), never by folder, so the same photos elsewhere
extend the same store and other photos make another one. Every process that extracts into the store
calibrates on the same photos, so they must be reachable from every worker.
"""
from __future__ import annotations

import hashlib
from os import PathLike
from pathlib import Path

from extractors.images import IMAGE_SUFFIXES
from pipeline.errors import InputError
from pipeline.hashing import sha256_file


def calibration_photos(folder: str | PathLike[str]) -> list[Path]:
    """The image files directly in `folder`, sorted by name; InputError naming the folder if there are none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(root, "int8 calibration: not a folder of photos")
    photos = sorted(path for path in root.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not photos:
        raise InputError(root, f"int8 calibration: no photos ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return photos


def calibration_digest(folder: str | PathLike[str]) -> str:
    """sha256 over the sorted sha256 of each photo: the same set of photos gives the same digest wherever it
    lies and whatever the files are called (MinMax ranges do not depend on the order either)."""
    digests = sorted(sha256_file(path) for path in calibration_photos(folder))
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()
