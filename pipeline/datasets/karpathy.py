"""Karpathy's caption/split JSON (dataset_flickr30k.json, dataset_coco.json, ...), the file SCAN's splits come from.

Schema: {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw", "tokens", ...}],
"imgid", "sentids", "cocoid"?, ...}]}. Only `raw` captions are used (SCAN re-tokenises them);
keys this reader does not use are ignored, so extended files (the demo's "objects") read as well.
"""
from __future__ import annotations

import posixpath
from pathlib import Path

from pipeline.datasets.sources import RawImage, expect_key, expect_type, parse_json, read_text
from pipeline.errors import InputError


def _captions(entry: dict, *, path: Path, location: str) -> list[tuple[str, str]]:
    sentences = expect_key(entry, "sentences", (list,), path=path, location=location)
    captions = []
    for number, sentence in enumerate(sentences):
        where = f"{location}.sentences[{number}]"
        expect_type(sentence, (dict,), path=path, location=where, what="a sentence")
        captions.append((expect_key(sentence, "raw", (str,), path=path, location=where), where))
    return captions


def _image(entry: object, number: int, *, path: Path, id_key: str | None) -> RawImage:
    location = f"images[{number}]"
    expect_type(entry, (dict,), path=path, location=location, what="an image entry")
    filename = expect_key(entry, "filename", (str,), path=path, location=location)
    folder = expect_key(entry, "filepath", (str,), path=path, location=location) if "filepath" in entry else ""
    split = expect_key(entry, "split", (str,), path=path, location=location)
    for key in ("imgid", "cocoid"):
        if key in entry:
            expect_key(entry, key, (int, str), path=path, location=location)
    image_id = str(expect_key(entry, id_key, (int, str), path=path, location=location)) if id_key else None
    relpath = posixpath.join(folder, filename) if folder else filename
    return RawImage(relpath, split, location, _captions(entry, path=path, location=location), image_id)


def read_karpathy(path: Path, *, id_key: str | None = None) -> list[RawImage]:
    """Every image entry of the file, in file order; `id_key` (COCO: "cocoid") supplies image ids."""
    document = parse_json(path, read_text(path))
    if not isinstance(document, dict) or "images" not in document:
        raise InputError(path, "not a Karpathy captions file: expected an object with an 'images' list")
    images = expect_type(document["images"], (list,), path=path, location="images", what="'images'")
    return [_image(entry, number, path=path, id_key=id_key) for number, entry in enumerate(images)]
