"""Confine paths read from data files to their dataset root (no `../../etc/passwd`)."""
from __future__ import annotations

import functools
import os
from os import PathLike
from pathlib import Path

from pipeline.errors import InputError


@functools.lru_cache(maxsize=64)
def _resolved_root(root: str) -> Path:
    return Path(root).resolve()


def confine(root: str | PathLike[str], relative: str,
            *, source: str | PathLike[str], location: str | None = None) -> Path:
    """Return `root / relative`, refusing absolute paths and anything that climbs out of `root`.

    The check is lexical (after normalising `..`), so it costs no file-system call per image
    and a dataset folder of symlinks the user made still works. `source` is the file that
    named the path; it is what the error points at.
    """
    if not relative or "\x00" in relative:
        raise InputError(source, f"empty or invalid image path {relative!r}", location=location)
    if os.path.isabs(relative) or (len(relative) > 1 and relative[1] == ":"):
        raise InputError(source, f"absolute path {relative!r} is not allowed; paths are relative to {root}",
                         location=location)
    normalised = os.path.normpath(relative)
    if normalised == ".." or normalised.startswith(".." + os.sep):
        raise InputError(source, f"path {relative!r} escapes the dataset root", location=location)
    return _resolved_root(os.fspath(root)) / normalised
