"""Raw reader entries -> ImageRecords: split names, path confinement, duplicates, empty captions, absent images.

One place for the checks every source format needs, so all readers report them the same way.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from pipeline.datasets.custom import hashed_split
from pipeline.datasets.records import NO_SPLIT, SPLIT_ALIASES, ImageRecord, Skipped
from pipeline.datasets.sources import RawImage
from pipeline.errors import InputError, MissingDataError
from pipeline.paths import confine

_SHOWN_MISSING = 3


def _split(image: RawImage, source: Path) -> str:
    if image.split is None:
        return hashed_split(image.relpath)
    if image.split in SPLIT_ALIASES:
        return SPLIT_ALIASES[image.split]
    raise InputError(source, f"unknown split {image.split!r}; expected one of "
                     f"{', '.join(sorted(SPLIT_ALIASES))} (or {NO_SPLIT!r} for images in no split)",
                     location=image.location)


def _kept_captions(image: RawImage, source: Path, skipped: list[Skipped]) -> tuple[str, ...]:
    """Captions with text; empty or whitespace-only ones are skipped and recorded, not fatal."""
    kept = []
    for caption, where in image.captions:
        if caption.strip():
            kept.append(caption)
        else:
            skipped.append(Skipped(source, where, f"empty caption for {image.relpath!r}"))
    return tuple(kept)


def _check_unique(image_id: str, path: Path, location: str, seen: dict[object, str], source: Path) -> None:
    """Two entries naming the same file or the same id would silently share features; refuse them."""
    for key, what in ((("id", image_id), "image id"), (("path", path), "image file")):
        if key in seen:
            raise InputError(source, f"duplicate {what} {str(key[1])!r} (first at {seen[key]})", location=location)
        seen[key] = location


def build_records(raw_images: list[RawImage], *, source: Path,
                  image_root: Path) -> tuple[list[ImageRecord], list[Skipped]]:
    """Checked records in source order, and what was left out on purpose (no split, no captions)."""
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    seen: dict[object, str] = {}
    for image in raw_images:
        path = confine(image_root, image.relpath, source=source, location=image.location)
        if image.split == NO_SPLIT:
            skipped.append(Skipped(source, image.location, f"{image.relpath!r} is in no split"))
            continue
        split = _split(image, source)
        image_id = image.image_id or PurePosixPath(image.relpath).stem
        _check_unique(image_id, path, image.location, seen, source)
        captions = _kept_captions(image, source, skipped)
        if captions:
            records.append(ImageRecord(image_id, path, image.relpath, split, captions))
        else:
            skipped.append(Skipped(source, image.location, f"{image.relpath!r} has no non-empty caption"))
    return records, skipped


def drop_absent_images(records: list[ImageRecord], *, policy: str, source: Path, image_root: Path,
                       hint: str) -> tuple[list[ImageRecord], list[Skipped]]:
    """Applies DatasetConfig.missing_images: "error" raises, "skip" drops and records, "allow" keeps all."""
    if policy == "allow":
        return records, []
    absent = [record for record in records if not record.path.is_file()]
    if absent and policy == "error":
        examples = ", ".join(record.relpath for record in absent[:_SHOWN_MISSING])
        raise MissingDataError(image_root, f"{len(absent)} of {len(records)} images listed in {source} are absent "
                               f"(e.g. {examples}); set missing_images=skip to use the others", hint=hint)
    gone = {id(record) for record in absent}
    kept = [record for record in records if id(record) not in gone]
    return kept, [Skipped(source, record.relpath, "image file absent") for record in absent]
