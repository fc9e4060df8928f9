"""Your own images with captions: `captions.csv` (header image,caption[,split]) or `captions.jsonl`.

One row per caption; an image's captions keep row order. `split` may be omitted (or left empty):
such images get the deterministic split of `hashed_split`.
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from pipeline.datasets.sources import RawImage, expect_key, expect_type, parse_json, read_text
from pipeline.errors import InputError

REQUIRED_COLUMNS = ("image", "caption")


def hashed_split(relpath: str) -> str:
    """Split from the image path alone, so adding or reordering images never moves another one:
    the first 8 hex digits of sha256(path) mod 100 -> 0-4 "test", 5-9 "dev", 10-99 "train"."""
    bucket = int(hashlib.sha256(relpath.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "test" if bucket < 5 else "dev" if bucket < 10 else "train"


def _add_row(images: dict[str, RawImage], path: Path, image: str, caption: str,
             split: str | None, location: str) -> None:
    split = split or None
    entry = images.setdefault(image, RawImage(image, split, location))
    if split is not None and entry.split is not None and split != entry.split:
        raise InputError(path, f"image {image!r} is in split {split!r} here but {entry.split!r} at {entry.location}",
                         location=location)
    entry.split = entry.split or split
    entry.captions.append((caption, location))


def read_captions_csv(path: Path) -> list[RawImage]:
    """Rows of a CSV with a header naming at least `image` and `caption` (plus optional `split`)."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = [name for name in REQUIRED_COLUMNS if name not in (reader.fieldnames or ())]
    if missing:
        raise InputError(path, f"header must name columns image,caption[,split]; missing {', '.join(missing)}",
                         location="line 1")
    images: dict[str, RawImage] = {}
    rows = iter(reader)
    while True:
        first_line = reader.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as error:  # e.g. a quote never closed before the end of the file
            raise InputError(path, f"malformed CSV ({error}); is a quote left open?", location=f"line {first_line}")
        location = f"line {first_line}"
        if reader.line_num != first_line:
            raise InputError(path, f"a quoted field runs on to line {reader.line_num}: a quote is left open, which "
                                   "would swallow the rows after it", location=location)
        if None in row or any(row[name] is None for name in REQUIRED_COLUMNS):
            raise InputError(path, f"expected {len(reader.fieldnames)} columns", location=location)
        _add_row(images, path, row["image"], row["caption"], row.get("split"), location)
    return list(images.values())


def read_captions_jsonl(path: Path) -> list[RawImage]:
    """One JSON object per line: {"image": str, "caption": str, "split": str | null (optional)}."""
    images: dict[str, RawImage] = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        location = f"line {number}"
        row = expect_type(parse_json(path, line, location=location), (dict,), path=path, location=location,
                          what="a line")
        image = expect_key(row, "image", (str,), path=path, location=location)
        caption = expect_key(row, "caption", (str,), path=path, location=location)
        split = expect_type(row.get("split"), (str, type(None)), path=path, location=location, what="'split'")
        _add_row(images, path, image, caption, split, location)
    return list(images.values())
