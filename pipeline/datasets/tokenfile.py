"""Flickr caption token files (`name.jpg#k<TAB>caption`) joined with one image list per split.

Flickr8k: Flickr8k.token.txt + Flickr_8k.{train,dev,test}Images.txt; Flickr30K:
results_20130124.token + train.txt/dev.txt/test.txt. A split list names each image by file
name or by id (the file name's stem). Images of the token file that no list names are left out
and recorded (the official Flickr8k token file has 91 of them); a list entry without captions
in the token file is an error.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from pipeline.datasets.records import NO_SPLIT
from pipeline.datasets.sources import RawImage, read_text
from pipeline.errors import InputError

_CAPTION_KEY = re.compile(r"(?P<name>.+)#(?P<number>\d+)")


def _stem(name: str) -> str:
    """Image id of a listed name: "1000092795.jpg" and "1000092795" both -> "1000092795"."""
    return posixpath.splitext(posixpath.basename(name))[0]


def read_token_file(path: Path) -> list[RawImage]:
    """One entry per image, in order of first appearance; captions in line order."""
    images: dict[str, RawImage] = {}
    seen_keys: dict[str, int] = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        match = _CAPTION_KEY.fullmatch(key.strip())
        if not tab or match is None:
            raise InputError(path, f"expected 'image.jpg#k<TAB>caption', got {line[:80]!r}", location=f"line {number}")
        if key in seen_keys:
            raise InputError(path, f"duplicate caption {key!r} (first on line {seen_keys[key]})",
                             location=f"line {number}")
        seen_keys[key] = number
        name = match["name"]
        image = images.setdefault(name, RawImage(name, None, f"line {number}"))
        image.captions.append((caption, f"line {number}"))
    return list(images.values())


def read_split_list(path: Path, split: str, assigned: dict[str, tuple[str, Path, int]]) -> None:
    """Adds `image id -> (split, list file, line)` for every name listed in `path`; a repeat is an error."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        image_id = _stem(name)
        if image_id in assigned:
            _, first_path, first_line = assigned[image_id]
            raise InputError(path, f"image {name!r} is listed twice (first in {first_path.name} line {first_line})",
                             location=f"line {number}")
        assigned[image_id] = (split, path, number)


def read_token_dataset(path: Path, split_files: dict[str, Path]) -> list[RawImage]:
    """The token file's images with the split their list gives them ("none": in no list)."""
    images = read_token_file(path)
    assigned: dict[str, tuple[str, Path, int]] = {}
    for split, split_path in split_files.items():
        read_split_list(split_path, split, assigned)
    by_id = {_stem(image.relpath): image for image in images}
    for image_id, (split, list_path, number) in assigned.items():
        if image_id not in by_id:
            raise InputError(list_path, f"image {image_id!r} has no captions in {path.name}", location=f"line {number}")
    for image in images:
        image.split = assigned.get(_stem(image.relpath), (NO_SPLIT,))[0]
    return images
