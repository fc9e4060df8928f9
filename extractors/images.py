"""Decode any photo a dataset may hold into one array layout: (H, W, 3) uint8 RGB, upright.

Datasets scraped from the web contain grayscale, CMYK, palette and 16-bit files, EXIF-rotated
phone photos, and files that are not images at all (error pages saved as .jpg, truncated
downloads). Everything decodable is normalised here; everything else raises BadImageError with
the reason, so the extraction driver can record it and carry on.

Transparency is composited over white (what a viewer shows); dropping alpha instead would expose
whatever colours the encoder left under fully transparent pixels.
"""
from __future__ import annotations

import errno
import warnings
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""File names that count as images when a folder is listed."""
DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own default bomb threshold (~ 0.25 GiB of RGBA); far above any real dataset photo."""

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_OPEN_ERRORS = {errno.ELOOP: "symbolic link loop", errno.EACCES: "permission denied",
                errno.EISDIR: "is a directory, not an image file", errno.ENOENT: "file not found"}


class BadImageError(InputError):
    """An image file that cannot be decoded; `problem` is the reason recorded in failures."""


def decode_image(path: str | PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Pixels of the image at `path` as a contiguous (H, W, 3) uint8 RGB array, EXIF-upright.

    The pixel count is checked from the header, before any pixel is decoded, so a tiny file that
    claims to be 50000 x 50000 is refused without allocating gigabytes. Pillow refuses anything over
    twice its own MAX_IMAGE_PIXELS regardless, so larger `max_pixels` values have no effect.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _decode_open_file(handle, path, max_pixels)
    except OSError as error:  # only opening and reading the file itself can get here
        reason = _OPEN_ERRORS.get(error.errno, error.strerror or str(error))
        raise BadImageError(path, f"cannot open: {reason}") from error


def _decode_open_file(handle, path: Path, max_pixels: int) -> np.ndarray:
    header = handle.read(16)
    if not header:
        raise BadImageError(path, "empty file (0 bytes)")
    handle.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
    except Image.DecompressionBombError as error:
        raise BadImageError(path, f"refused before decoding: {error}") from error
    except UnidentifiedImageError as error:
        raise BadImageError(path, f"not a recognised image format ({_describe_header(header)})") from error
    except Exception as error:  # a recognised header with broken contents
        raise BadImageError(path, f"unreadable image header ({error})") from error
    width, height = image.size
    if width * height > max_pixels:
        raise BadImageError(path, f"refused before decoding: {width}x{height} = {width * height} pixels exceeds "
                                  f"max_pixels={max_pixels} (possible decompression bomb)")
    try:
        image.load()
        return _to_rgb_array(ImageOps.exif_transpose(image), path)
    except BadImageError:
        raise
    except Exception as error:  # decoders raise OSError, ValueError, EOFError, struct.error, zlib.error...
        raise BadImageError(path, f"corrupt or truncated {image.format or 'image'} data ({error})") from error


def _describe_header(header: bytes) -> str:
    """A hint about what the file is instead, from its first bytes."""
    text = header.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "it looks like an HTML/XML text file"
    return f"first bytes {header[:8].hex(' ')}"


def _to_rgb_array(image: Image.Image, path: Path) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB; alpha and palette transparency over white."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale: keep the full range by scaling 0..65535 -> 0..255 (Pillow's convert clips).
        gray = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode == "F":
        raise BadImageError(path, "floating-point (mode F) images have no defined 0..255 range; convert them first")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
