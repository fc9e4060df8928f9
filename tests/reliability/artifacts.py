"""What a run leaves behind: temp files of unfinished writes, absolute machine paths inside files."""
from __future__ import annotations

import os
from pathlib import Path


def leftover_temp_files(folder: Path) -> list[str]:
    """Temp files of our atomic writers (`.x.tmp`, `x.tmp-<pid>`) and luigi's (`-luigi-tmp-`) under `folder`."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if ".tmp" in path.name or "-luigi-tmp-" in path.name)


def machine_paths_in(folder: Path, *paths: Path) -> list[str]:
    """Files under `folder` whose bytes contain one of `paths` (absolute machine paths) or the home folder."""
    needles = {str(path).encode() for path in paths} | {os.path.expanduser("~").encode() + b"/"}
    return sorted(str(file.relative_to(folder)) for file in folder.rglob("*")
                  if file.is_file() and any(needle in file.read_bytes() for needle in needles))
