"""Reading source files strictly (UTF-8, JSON) and the raw entry every reader yields before checks."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InputError


@dataclass
class RawImage:
    """One image as a source file lists it, before path confinement and duplicate checks.

    `split` is the source's own name ("val", "restval", ...) or None when the source gives none;
    `captions` pairs each caption with where it was read (for skip records and errors).
    """

    relpath: str
    split: str | None
    location: str
    captions: list[tuple[str, str]] = field(default_factory=list)
    image_id: str | None = None


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM allowed); bad bytes -> InputError with their line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise InputError(path, f"not UTF-8: byte {data[error.start]:#04x} at offset {error.start}",
                         location=f"line {line}") from error


def parse_json(path: Path, text: str, *, location: str | None = None) -> Any:
    """`text` parsed as JSON; a syntax error names the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = location or f"line {error.lineno}, column {error.colno}"
        raise InputError(path, f"malformed JSON: {error.msg}", location=where) from error


def expect_type(value: Any, kinds: tuple[type, ...], *, path: Path, location: str, what: str) -> Any:
    """`value` if it has one of the expected JSON types (a bool is not an int here), else InputError."""
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(path, f"{what} is not valid Unicode text (lone surrogate)",
                                 location=location) from None
        return value
    expected = " or ".join(kind.__name__ for kind in kinds)
    raise InputError(path, f"{what} must be {expected}, got {type(value).__name__}", location=location)


def expect_key(entry: dict, key: str, kinds: tuple[type, ...], *, path: Path, location: str) -> Any:
    """`entry[key]`, which must exist and have the expected JSON type."""
    if key not in entry:
        raise InputError(path, f"missing key {key!r}", location=location)
    return expect_type(entry[key], kinds, path=path, location=location, what=f"{key!r}")
