"""Check a store against its manifest and report what is wrong and how to fix it."""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.atomic import is_temp_path
from pipeline.store.layout import (MANIFEST, SHARDS_DIR, StoreInfo, completed_shards, open_shard, read_store_info,
                                   shard_info)
from pipeline.store.planning import MANIFEST_SCHEMA, newest_entries

_REEXTRACT = ("re-run the same extraction (the workflow, or `python -m extractors extract` with the same settings): "
              "it deletes this unusable shard and extracts only its images again")
_DELETE_THEN_REEXTRACT = ("delete this shard, then re-run the same extraction (the workflow, or `python -m extractors "
                          "extract` with the same settings): only its images are extracted again")
_RECOMMIT = "re-run the same extraction: it finds nothing new to extract and rewrites the manifest"
_BLOCK = 64


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store: which file, what, and what to do about it."""

    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}\n    fix: {self.fix}"


def verify_store(store_dir: str | PathLike[str], *, check_values: bool = True) -> list[Problem]:
    """Every problem found; an empty list means the store is complete and consistent.

    `check_values` also reads all features to find NaN/Inf (slow on big stores: it reads them all).
    """
    store_dir = Path(store_dir)
    try:
        info = read_store_info(store_dir)
    except InputError as error:
        return [Problem(error.path, error.problem, "re-create the store with init_store and re-extract")]
    problems = [Problem(str(path), "leftover temp file of an interrupted shard write", "delete it; it is never read")
                for path in sorted((store_dir / SHARDS_DIR).glob("*")) if is_temp_path(path)]
    row_counts: dict[int, int] = {}
    for index, path in completed_shards(store_dir).items():
        count, found = _check_shard(path, info, check_values)
        problems += found
        if count is not None:
            row_counts[index] = count
    return problems + _check_manifest(store_dir, row_counts)


def unusable_shards(store_dir: str | PathLike[str]) -> list[Path]:
    """Published shards that cannot be read or do not fit the store (truncated, garbage, another store's)."""
    info = read_store_info(store_dir)
    return [path for path in completed_shards(store_dir).values() if _check_shard(path, info, False)[0] is None]


def _check_shard(path: Path, info: StoreInfo, check_values: bool) -> tuple[Optional[int], list[Problem]]:
    """Row count of a readable shard (None if unusable) and the problems found in it."""
    try:
        with open_shard(path) as handle:
            return _check_open_shard(handle, path, info, check_values)
    except InputError as error:
        return None, [Problem(error.path, error.problem, _REEXTRACT)]
    except (OSError, KeyError) as error:
        return None, [Problem(str(path), f"unreadable ({error})", _REEXTRACT)]


def _check_open_shard(handle: h5py.File, path: Path, info: StoreInfo,
                      check_values: bool) -> tuple[Optional[int], list[Problem]]:
    n = handle["image_ids"].shape[0] if "image_ids" in handle else 0
    k, d = info.max_boxes, info.feature_dim
    expected = {"features": ((n, k, d), np.dtype(info.feature_dtype)), "boxes": ((n, k, 4), np.float32),
                "num_boxes": ((n,), np.int32), "object_ids": ((n, k), np.int32), "object_conf": ((n, k), np.float32),
                "attr_ids": ((n, k), np.int32), "attr_conf": ((n, k), np.float32), "image_hw": ((n, 2), np.int32),
                "image_ids": ((n,), None), "relpaths": ((n,), None), "sha256": ((n,), None)}
    problems = []
    for name, (shape, dtype) in expected.items():
        if name not in handle:
            problems.append(Problem(str(path), f"dataset {name!r} is missing", _REEXTRACT))
        elif handle[name].shape != shape or (dtype is not None and handle[name].dtype != dtype):
            problems.append(Problem(str(path), f"dataset {name!r} is {handle[name].shape} {handle[name].dtype}; "
                                               f"expected {shape} {dtype or 'string'}", _REEXTRACT))
    stored = shard_info(handle)
    if stored is not None and stored.differences(info):
        problems.append(Problem(str(path),
                                f"written with a different {', '.join(stored.differences(info))} than store.json",
                                "this shard belongs to another store: " + _REEXTRACT))
    if problems:
        return None, problems
    num_boxes = handle["num_boxes"][()]
    if n and (num_boxes.min() < 1 or num_boxes.max() > k):
        problems.append(Problem(str(path), f"num_boxes outside 1..{k}", _DELETE_THEN_REEXTRACT))
    if check_values:
        problems += _check_finite(handle, path)
    return n, problems


def _check_finite(handle: h5py.File, path: Path) -> list[Problem]:
    features = handle["features"]
    for start in range(0, features.shape[0], _BLOCK):
        block = features[start:start + _BLOCK]
        if not np.isfinite(block).all():
            row = start + int(np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).all(axis=1))[0])
            name = handle["image_ids"][row]
            return [Problem(str(path), f"features of image {name.decode() if isinstance(name, bytes) else name!r} "
                                       f"(row {row}) contain NaN or Inf", _DELETE_THEN_REEXTRACT)]
    return []


def _check_manifest(store_dir: Path, row_counts: dict[int, int]) -> list[Problem]:
    path = store_dir / MANIFEST
    if not path.is_file():
        return [Problem(str(path), "missing: extraction did not finish", _RECOMMIT)]
    try:
        table = pq.read_table(path)
    except Exception as error:
        return [Problem(str(path), f"unreadable ({error})", _RECOMMIT)]
    if not table.schema.equals(MANIFEST_SCHEMA):
        return [Problem(str(path), f"unexpected columns {table.schema.names}", _RECOMMIT)]
    manifest = table.to_pydict()
    problems = []
    if len(set(manifest["image_id"])) != table.num_rows:
        problems.append(Problem(str(path), "lists an image id more than once", _RECOMMIT))
    by_shard: dict[int, list[int]] = {}
    for entry, shard in enumerate(manifest["shard"]):
        by_shard.setdefault(shard, []).append(entry)
    for shard, entries in sorted(by_shard.items()):
        problems += _check_manifest_rows(store_dir, path, shard, entries, manifest, row_counts)
    return problems or _check_newest(store_dir, path, manifest)


def _check_newest(store_dir: Path, path: Path, manifest: dict) -> list[Problem]:
    """A shard finished after the manifest was written makes it stale for the images it redid."""
    try:
        newest = newest_entries(store_dir)
    except InputError:
        return []  # the unreadable shard is reported on its own
    for entry, image_id in enumerate(manifest["image_id"]):
        latest = newest.get(image_id)
        if latest is not None and (latest.shard, latest.row) != (manifest["shard"][entry], manifest["row"][entry]):
            kind = "failure" if latest.failure is not None else "row"
            return [Problem(str(path), f"stale: image {image_id!r} has a newer {kind} in shard {latest.shard}",
                            "extraction was interrupted before its last step: " + _RECOMMIT)]
    return []


def _check_manifest_rows(store_dir: Path, path: Path, shard: int, entries: list[int], manifest: dict,
                         row_counts: dict[int, int]) -> list[Problem]:
    """Do the manifest entries pointing into one shard match that shard's rows?"""
    if shard not in row_counts:
        return [Problem(str(path), f"{len(entries)} images point to shard {shard}, which is missing or unusable",
                        _REEXTRACT.replace("this shard", "the shard"))]
    rows = [manifest["row"][entry] for entry in entries]
    if max(rows) >= row_counts[shard] or min(rows) < 0:
        return [Problem(str(path), f"rows outside shard {shard} (it has {row_counts[shard]})", _RECOMMIT)]
    with open_shard(completed_shards(store_dir)[shard]) as handle:
        ids, boxes, hw = handle["image_ids"].asstr()[()], handle["num_boxes"][()], handle["image_hw"][()]
    for entry, row in zip(entries, rows):
        stored = (ids[row], int(boxes[row]), int(hw[row, 0]), int(hw[row, 1]))
        listed = tuple(manifest[name][entry] for name in ("image_id", "num_boxes", "height", "width"))
        if stored != listed:
            return [Problem(str(path), f"entry {entry} says {listed} but shard {shard} row {row} holds {stored}",
                            _RECOMMIT)]
    return []
