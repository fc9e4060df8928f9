"""What a run leaves behind: temp files of unfinished writes, absolute machine paths, store rows to compare."""
from __future__ import annotations

import os
from pathlib import Path

import h5py


def leftover_temp_files(folder: Path) -> list[str]:
    """Temp files of our atomic writers (`.x.tmp`, `x.tmp-<pid>`) and luigi's (`-luigi-tmp-`) under `folder`."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if ".tmp" in path.name or "-luigi-tmp-" in path.name)


def machine_paths_in(folder: Path, *paths: Path) -> list[str]:
    """Files under `folder` whose bytes contain one of `paths` (absolute machine paths) or the home folder."""
    needles = {str(path).encode() for path in paths} | {os.path.expanduser("~").encode() + b"/"}
    return sorted(str(file.relative_to(folder)) for file in folder.rglob("*")
                  if file.is_file() and any(needle in file.read_bytes() for needle in needles))


def store_rows(store: Path, datasets: tuple[str, ...]) -> dict[str, bytes]:
    """Every image's bytes in the given shard datasets, keyed by image id: byte-equality of two stores."""
    rows = {}
    for shard in sorted((store / "shards").glob("shard-*.h5")):
        with h5py.File(shard, "r") as handle:
            for row, image_id in enumerate(handle["image_ids"].asstr()[()]):
                rows[image_id] = b"".join(handle[name][row].tobytes() for name in datasets)
    return rows
