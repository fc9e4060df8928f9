"""Where things live in a store directory and what store.json says about all of its shards.

    store_dir/store.json            StoreInfo: extractor config, weights sha256, D, K, dtype
    store_dir/shards/shard-00000.h5 one HDF5 file per shard (see writer.py)
    store_dir/manifest.parquet      image_id -> (shard, row); written last, marks completion
    store_dir/failures.parquet      images that could not be read, and why
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Optional

import h5py

from pipeline.errors import InputError
from pipeline.atomic import write_text_atomic
from pipeline.store.config import FEATURE_DTYPES
from pipeline.hashing import canonical_json

FORMAT_VERSION = 1
STORE_JSON = "store.json"
MANIFEST = "manifest.parquet"
FAILURES = "failures.parquet"
SHARDS_DIR = "shards"
_SHARD_NAME = re.compile(r"^shard-(\d{5})\.h5$")


@dataclass(frozen=True)
class StoreInfo:
    """Store-level attributes; every shard of a store shares them (written to each shard too)."""

    feature_dim: int
    max_boxes: int
    feature_dtype: str = "float16"
    extractor: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.feature_dim < 1 or self.max_boxes < 1:
            raise ValueError(f"feature_dim={self.feature_dim}, max_boxes={self.max_boxes}; both must be positive")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype={self.feature_dtype!r}; expected one of {', '.join(FEATURE_DTYPES)}")

    def to_json(self) -> str:
        return canonical_json(asdict(self))

    def differences(self, other: "StoreInfo") -> list[str]:
        """Names of the fields where two infos disagree (compared in canonical JSON form)."""
        mine, theirs = json.loads(self.to_json()), json.loads(other.to_json())
        return [name for name in mine if mine[name] != theirs.get(name)]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def shard_path(store_dir: str | PathLike[str], index: int) -> Path:
    return Path(store_dir) / SHARDS_DIR / shard_name(index)


def completed_shards(store_dir: str | PathLike[str]) -> dict[int, Path]:
    """Published shard files by index (temp files of unfinished writes are not listed)."""
    folder = Path(store_dir) / SHARDS_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _SHARD_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def info_from_json(text: str, source: Path) -> StoreInfo:
    try:
        return StoreInfo(**json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise InputError(source, f"not a valid store description ({error}); "
                                 "delete the store directory and re-extract") from error


def read_store_info(store_dir: str | PathLike[str]) -> StoreInfo:
    path = Path(store_dir) / STORE_JSON
    if not path.is_file():
        raise InputError(path, "missing: not a feature store, or its creation did not finish")
    return info_from_json(path.read_text(encoding="utf-8"), path)


def init_store(store_dir: str | PathLike[str], info: StoreInfo) -> StoreInfo:
    """Create the store (store.json, shards/) or check that an existing one was made the same way.

    Never mixes: a store made by another extractor config, weights, D, K or dtype is refused;
    name stores by `config_fingerprint(config)` so each config gets its own directory.
    """
    store_dir = Path(store_dir)
    (store_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    path = store_dir / STORE_JSON
    if not path.exists():
        write_text_atomic(path, info.to_json() + "\n")
        return info
    check_same_store(read_store_info(store_dir), info, path)
    return info


def check_same_store(existing: StoreInfo, wanted: StoreInfo, source: Path) -> None:
    changed = existing.differences(wanted)
    if changed:
        raise InputError(source, f"this store was made with different {', '.join(changed)}; refusing to mix features "
                                 "— write to another store directory (e.g. named by config_fingerprint)")


def open_shard(path: str | PathLike[str], mode: str = "r") -> h5py.File:
    """Open one shard, turning HDF5's low-level errors (truncation, garbage) into an InputError."""
    try:
        return h5py.File(path, mode)
    except FileNotFoundError as error:
        raise InputError(path, "shard file is missing; re-run the same extraction (the workflow, or "
                               "`python -m extractors extract` with the same settings): only the missing shard's "
                               "images are extracted again") from error
    except OSError as error:
        raise InputError(path, f"cannot be read as HDF5, truncated or corrupt ({error}); re-run the same extraction: "
                               "it deletes the unusable shard and extracts only its images again") from error


def shard_info(handle: h5py.File) -> Optional[StoreInfo]:
    """The StoreInfo a shard was written under, or None for a shard written without one."""
    text = handle.attrs.get("store_info")
    return None if text is None else info_from_json(str(text), Path(handle.filename))


def adopt_shards(source_dir: str | PathLike[str], target_dir: str | PathLike[str]) -> int:
    """Give an empty store the published shards of another store made the same way; returns how many.

    Shards are immutable, so they are hard-linked (no copy, no extra disk; copied where links are not
    possible): a new version of a dataset then extracts only its new or changed images.
    """
    source, target = read_store_info(source_dir), read_store_info(target_dir)
    check_same_store(source, target, Path(target_dir) / STORE_JSON)
    if completed_shards(target_dir):
        raise ValueError(f"{target_dir}: already holds shards; shards are only adopted into an empty store")
    adopted = 0
    for index, path in completed_shards(source_dir).items():
        destination = shard_path(target_dir, index)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)
        adopted += 1
    return adopted
