"""Write-then-rename, so readers see either the old file or the complete new one, never half."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


def temp_path_for(final: Path) -> Path:
    """Temporary sibling of `final`, unique per process so parallel writers never collide."""
    return final.with_name(f"{final.name}.tmp-{os.getpid()}")


def is_temp_path(path: Path) -> bool:
    return ".tmp-" in path.name


def remove_abandoned_temp_files(folder: Path, final_name: str = "") -> None:
    """Delete the temp files in `folder` (only those of `final_name`, if given) whose writer died.

    Left by kill -9 or a power loss, they are never read. Only call this where one writer owns
    the folder (or that final file), so that every temp file found is abandoned.
    """
    if folder.is_dir():
        for path in folder.iterdir():
            if is_temp_path(path) and path.name.startswith(final_name) and path.is_file():
                path.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, final: Path) -> None:
    """fsync the finished temp file, rename it over `final`, fsync the directory entry."""
    fsync_path(temp)
    os.replace(temp, final)
    fsync_path(final.parent)


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path to write; publish it as `final` on success, delete it on error."""
    final = Path(final)
    temp = temp_path_for(final)
    try:
        yield temp
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    publish(temp, final)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> None:
    with atomic_output(final) as temp:
        temp.write_text(text, encoding="utf-8")


def write_parquet_atomic(final: str | os.PathLike[str], table: pa.Table) -> None:
    with atomic_output(final) as temp:
        pq.write_table(table, temp)
