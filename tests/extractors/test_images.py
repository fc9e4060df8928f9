"""decode_image on real photos, on every pixel layout a dataset may contain, and on broken files."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extractors.images import BadImageError, decode_image
from pipeline.errors import InputError


def _save(tmp_path: Path, name: str, image: Image.Image, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def _forged_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` but which holds almost no data (a bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_real_photos_decode_to_rgb_uint8(shared_data: Path) -> None:
    photos = (sorted((shared_data / "flickr8k" / "images").glob("*.jpg"))[:3]
              + sorted((shared_data / "butd_demo_images").glob("*.jpg"))[:2])
    for photo in photos:
        pixels = decode_image(photo)
        with Image.open(photo) as reference:
            width, height = reference.size
            expected = np.asarray(reference.convert("RGB"))
        assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8 and pixels.flags.c_contiguous
        np.testing.assert_array_equal(pixels, expected)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)  # red band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(tmp_path, "rotated.png", Image.fromarray(stored), exif=exif)
    pixels = decode_image(path)
    assert pixels.shape == (40, 20, 3)
    np.testing.assert_array_equal(pixels[:10, :, 0], 255)  # the red band is now on top
    np.testing.assert_array_equal(pixels[10:, :, 0], 0)


def test_grayscale_and_cmyk_become_rgb(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (4, 1))
    pixels = decode_image(_save(tmp_path, "gray.png", Image.fromarray(gray, "L")))
    np.testing.assert_array_equal(pixels, np.repeat(gray[:, :, None], 3, axis=2))
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    pixels = decode_image(_save(tmp_path, "cmyk.jpg", cmyk, quality=95))
    assert pixels.shape == (8, 16, 3)
    assert pixels[..., 0].min() > 240 and pixels[..., 1:].max() < 15


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    pixels = decode_image(_save(tmp_path, "alpha.png", Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(pixels[:2], np.broadcast_to([10, 20, 30], (2, 4, 3)))
    np.testing.assert_array_equal(pixels[2:], 255)
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    pixels = decode_image(_save(tmp_path, "palette.png", palette, transparency=0))
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(pixels[0, 1], [200, 0, 0])


def test_sixteen_bit_png_keeps_its_full_range(tmp_path: Path) -> None:
    deep = np.array([[0, 257 * 128, 65535]], np.uint16)
    path = _save(tmp_path, "deep.png", Image.fromarray(deep))
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really stored as 16-bit
    np.testing.assert_array_equal(decode_image(path)[0, :, 0], [0, 128, 255])


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    # The data is truncated: had it been decoded, the error would be about truncation instead.
    with pytest.raises(BadImageError, match="refused before decoding.*max_pixels=1000"):
        decode_image(_forged_png(tmp_path / "small-claim.png", 64, 64), max_pixels=1000)
    with pytest.raises(BadImageError, match="refused before decoding"):
        decode_image(_forged_png(tmp_path / "bomb.png", 60000, 60000))


@pytest.mark.parametrize("name, content, reason", [
    ("empty.jpg", b"", "empty file"),
    ("random.jpg", np.random.default_rng(0).bytes(4096), "not a recognised image format"),
    ("error-page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
])
def test_non_images_are_refused_with_the_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as caught:
        decode_image(path)
    assert isinstance(caught.value, InputError) and str(caught.value).startswith(str(path))


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
def test_truncated_files_are_refused(tmp_path: Path, shared_data: Path, kind: str) -> None:
    photo = Image.open(sorted((shared_data / "flickr8k" / "images").glob("*.jpg"))[0])
    whole = _save(tmp_path, f"whole.{kind.lower()}", photo, format=kind).read_bytes()
    path = tmp_path / f"cut.{kind.lower()}"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadImageError, match=f"corrupt or truncated {kind}"):
        decode_image(path)


def test_unopenable_paths_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    with pytest.raises(BadImageError, match="symbolic link loop"):
        decode_image(tmp_path / "a.jpg")
    with pytest.raises(BadImageError, match="file not found"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(BadImageError, match="is a directory"):
        decode_image(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, "locked.png", Image.new("RGB", (4, 4)))
    path.chmod(0)
    try:
        with pytest.raises(BadImageError, match="permission denied"):
            decode_image(path)
    finally:
        path.chmod(0o600)
