"""Generators of malformed and unusual inputs, in the byte formats real datasets contain."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth RGB image with structure (gradients + blobs), so the detector sees more than noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [127 + 120 * np.sin(x / rng.uniform(5, 20) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(5, 20))
                for _ in range(3)]
    return Image.fromarray(np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8), "RGB")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims width x height pixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + _chunk(b"IEND", b""))


def exif_rotated_jpeg(seed: int) -> bytes:
    """A 96x72 JPEG whose EXIF orientation 6 says: show it rotated by 90 degrees (72 wide, 96 high)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(photo(seed), "JPEG", exif=exif.tobytes())


def sixteen_bit_png(seed: int) -> bytes:
    gray = np.asarray(photo(seed).convert("L"), dtype=np.uint16) * 257
    return encoded(Image.fromarray(gray), "PNG")


def palette_with_transparency(seed: int) -> bytes:
    image = photo(seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encoded(image, "PNG", transparency=0)




def bad_image_files(seed: int) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, words the recorded failure reason must contain)."""
    jpeg, png = encoded(photo(seed), "JPEG", quality=90), encoded(photo(seed + 1), "PNG")
    return {
        "zero bytes.jpg": (b"", "empty file"),
        "truncated-jpeg.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated-png.png": (png[: len(png) // 2], "truncated"),
        "random.jpg": (np.random.default_rng(seed).bytes(2048), "not a recognised image format"),
        "error page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
        "bomb-20000.png": (png_claiming(20000, 20000), "refused before decoding"),
        "bomb-10000.png": (png_claiming(10000, 10000), "refused before decoding"),
    }


def odd_but_valid_image_files(seed: int) -> dict[str, bytes]:
    """Files that are unusual but valid: each must be extracted, not failed."""
    return {
        "sixteen-bit.png": sixteen_bit_png(seed),
        "cmyk.jpg": encoded(photo(seed + 2).convert("CMYK"), "JPEG"),
        "palette-transparent.png": palette_with_transparency(seed + 3),
        "exif-rotated.jpg": exif_rotated_jpeg(seed + 4),
        "name with spaces.jpg": encoded(photo(seed + 5), "JPEG"),
        "ünïcødé 写真.png": encoded(photo(seed + 6), "PNG"),
    }


def one_pixel_png() -> bytes:
    return encoded(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
