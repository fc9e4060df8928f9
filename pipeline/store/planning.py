"""Incremental extraction: which images still need work, and the manifest of what is done.

State lives in the published shards themselves (each records image_id, source relpath and
sha256 per row, and its failures), so a crash between shard and manifest loses nothing:
`commit_manifest` rebuilds the manifest from whatever shards completed.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import write_parquet_atomic
from pipeline.store.layout import FAILURES, MANIFEST, completed_shards, open_shard, shard_path

MANIFEST_SCHEMA = pa.schema([("image_id", pa.string()), ("relpath", pa.string()), ("sha256", pa.string()),
                             ("shard", pa.int32()), ("row", pa.int32()), ("height", pa.int32()),
                             ("width", pa.int32()), ("num_boxes", pa.int32())])
FAILURES_SCHEMA = pa.schema([("image_id", pa.string()), ("relpath", pa.string()), ("sha256", pa.string()),
                             ("shard", pa.int32()), ("reason", pa.string())])


class ImageSource(NamedTuple):
    """One image to extract: its id, path relative to the dataset root, and file sha256."""

    image_id: str
    relpath: str
    sha256: str


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its index, final path, and the images that go into it, in order."""

    index: int
    path: Path
    images: tuple[ImageSource, ...]


@dataclass(frozen=True)
class StoredImage:
    """Where the newest attempt at one image ended up: a row of a shard, or a failure."""

    image_id: str
    relpath: str
    sha256: str
    shard: int
    row: int = -1
    height: int = 0
    width: int = 0
    num_boxes: int = 0
    failure: Optional[str] = None


def _text(values: np.ndarray) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else str(value) for value in values]


def read_shard_index(path: Path, index: int) -> list[StoredImage]:
    """Rows and failures of one shard, without touching its features."""
    with open_shard(path) as handle:
        ids, relpaths, shas = (_text(handle[name][()]) for name in ("image_ids", "relpaths", "sha256"))
        boxes, hw = handle["num_boxes"][()], handle["image_hw"][()]
        failures = zip(*(_text(handle["failures"][name][()]) for name in ("image_id", "relpath", "sha256", "reason")))
        rows = [StoredImage(i, r, s, index, row, int(hw[row, 0]), int(hw[row, 1]), int(boxes[row]))
                for row, (i, r, s) in enumerate(zip(ids, relpaths, shas))]
        return rows + [StoredImage(i, r, s, index, failure=reason) for i, r, s, reason in failures]


def newest_entries(store_dir: str | PathLike[str]) -> dict[str, StoredImage]:
    """image_id -> its entry in the highest-numbered shard that mentions it (newest attempt wins)."""
    newest: dict[str, StoredImage] = {}
    for index, path in completed_shards(store_dir).items():
        for entry in read_shard_index(path, index):
            newest[entry.image_id] = entry
    return newest


def plan_shards(images: Sequence[tuple[str, str, str]], store_dir: str | PathLike[str], shard_size: int,
                *, retry_failed: bool = False) -> list[ShardPlan]:
    """Split the images that still need extraction into new shards (numbered after existing ones).

    An image needs work unless its newest entry has the same sha256 (a failure counts as done
    unless `retry_failed`). Changed images go into new shards; existing shards are never touched.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}; expected a positive number of images")
    sources = [ImageSource(*image) for image in images]
    duplicated = len(sources) - len({source.image_id for source in sources})
    if duplicated:
        raise ValueError(f"{duplicated} image ids are listed more than once; image ids must be unique")
    newest = newest_entries(store_dir)

    def needs_work(source: ImageSource) -> bool:
        entry = newest.get(source.image_id)
        return entry is None or entry.sha256 != source.sha256 or (retry_failed and entry.failure is not None)

    todo = [source for source in sources if needs_work(source)]
    first = max(completed_shards(store_dir), default=-1) + 1
    chunks = [tuple(todo[start:start + shard_size]) for start in range(0, len(todo), shard_size)]
    return [ShardPlan(first + n, shard_path(store_dir, first + n), chunk) for n, chunk in enumerate(chunks)]


def commit_manifest(store_dir: str | PathLike[str], image_ids: Optional[Iterable[str]] = None, *,
                    keep_listed: bool = False) -> Path:
    """Rebuild failures.parquet, then manifest.parquet (last: it marks the store complete).

    With `image_ids`, the manifest lists exactly those images in that order (a failed one goes to
    failures.parquet; one never attempted is an error), after the images the current manifest lists
    when `keep_listed` (adding images never removes others); without, every stored image by shard, row.
    """
    store_dir = Path(store_dir)
    newest = newest_entries(store_dir)
    if image_ids is None:
        chosen = sorted(newest.values(), key=lambda entry: (entry.shard, entry.row))
    else:
        wanted = list(dict.fromkeys([*(_listed(store_dir) if keep_listed else []), *image_ids]))
        missing = [image_id for image_id in wanted if image_id not in newest]
        if missing:
            raise ValueError(f"{store_dir}: {len(missing)} images were never extracted (first: {missing[0]!r}); "
                             "run extraction first")
        chosen = [newest[image_id] for image_id in wanted]
    done = [entry for entry in chosen if entry.failure is None]
    failed = [entry for entry in chosen if entry.failure is not None]
    write_parquet_atomic(store_dir / FAILURES, _table(failed, FAILURES_SCHEMA))
    manifest = store_dir / MANIFEST
    write_parquet_atomic(manifest, _table(done, MANIFEST_SCHEMA))
    return manifest


def read_failures(store_dir: str | PathLike[str]) -> list[tuple[str, str]]:
    """(image_id, reason) of every image the store could not describe, as its last commit listed them."""
    path = Path(store_dir) / FAILURES
    if not path.is_file():
        return []
    table = pq.read_table(path, columns=["image_id", "reason"]).to_pydict()
    return list(zip(table["image_id"], table["reason"]))


def _listed(store_dir: Path) -> list[str]:
    """Image ids of the current manifest and failures table (none when the store has no manifest yet)."""
    listed = []
    for name in (MANIFEST, FAILURES):
        if (store_dir / name).is_file():
            listed += pq.read_table(store_dir / name, columns=["image_id"]).column("image_id").to_pylist()
    return listed


def _table(entries: list[StoredImage], schema: pa.Schema) -> pa.Table:
    attribute = {"reason": "failure"}
    columns = {name: [getattr(entry, attribute.get(name, name)) for entry in entries] for name in schema.names}
    return pa.table(columns, schema=schema)
