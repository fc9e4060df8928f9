"""Confine paths read from data files to their dataset root (no `../../etc/passwd`)."""
from __future__ import annotations

from os import PathLike
from pathlib import Path

from pipeline.errors import InputError


def confine(root: str | PathLike[str], relative: str, *, source: str | PathLike[str], location: str | None = None) -> Path:
    """Resolve `relative` under `root`, refusing absolute paths and anything that escapes it.

    `source` is the file that named the path; it is what the error points at.
    """
    if not relative or "\x00" in relative:
        raise InputError(source, f"empty or invalid image path {relative!r}", location=location)
    candidate = Path(relative)
    if candidate.is_absolute():
        raise InputError(source, f"absolute path {relative!r} is not allowed; paths are relative to {root}", location=location)
    base = Path(root).resolve()
    resolved = (base / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise InputError(source, f"path {relative!r} escapes the dataset root", location=location)
    return resolved
