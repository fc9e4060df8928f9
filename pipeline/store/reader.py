"""Random-access reads of a finished store, for training: batches, not the whole store in memory."""
from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.store.layout import MANIFEST, open_shard, read_store_info, shard_path
from pipeline.store.records import RegionRecord


class StoreReader:
    """Images of a store in manifest order; index i is the i-th manifest row.

    Shard files are opened lazily and per process: a handle opened before a DataLoader forks
    is never used in the worker (the pid is checked and files are reopened), and pickling drops
    handles, so the store can go to spawned workers too. Only the manifest is held in memory.
    """

    def __init__(self, store_dir: str | PathLike[str]) -> None:
        self.store_dir = Path(store_dir)
        self.info = read_store_info(self.store_dir)
        manifest = self.store_dir / MANIFEST
        if not manifest.is_file():
            raise InputError(manifest, "missing: extraction has not finished (the manifest is written last); re-run it")
        try:
            table = pq.read_table(manifest, columns=["image_id", "shard", "row", "num_boxes"])
        except Exception as error:
            raise InputError(manifest, f"unreadable manifest ({error}); rebuild it with commit_manifest") from error
        self._ids = table.column("image_id").to_pylist()
        self._shard = table.column("shard").to_numpy().astype(np.int64)
        self._row = table.column("row").to_numpy().astype(np.int64)
        self._num_boxes = table.column("num_boxes").to_numpy().astype(np.int64)
        self._position = {image_id: i for i, image_id in enumerate(self._ids)}
        self._pid = os.getpid()
        self._handles: dict[int, h5py.File] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._position

    @property
    def image_ids(self) -> list[str]:
        return self._ids

    def index_of(self, image_id: str) -> int:
        try:
            return self._position[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the store {self.store_dir}") from None

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (B, K, D) float32 (zero rows past num_boxes) and num_boxes (B,) int64.

        Reads are grouped by shard and sorted by row, so a random batch costs one seek per image.
        """
        positions = self._checked(indices)
        features = np.empty((len(positions), self.info.max_boxes, self.info.feature_dim), dtype=np.float32)
        shards, rows = self._shard[positions], self._row[positions]
        for shard in np.unique(shards):
            dataset = self._file(int(shard))["features"]
            slots = np.flatnonzero(shards == shard)
            for slot in slots[np.argsort(rows[slots], kind="stable")]:
                # h5py converts float16 faster in numpy than HDF5 does in read_direct
                features[slot] = self._guarded(int(shard), lambda: dataset[rows[slot]])
        return features, self._num_boxes[positions]

    def get(self, image_id: str) -> RegionRecord:
        """Everything stored for one image, trimmed to its num_boxes regions; features float32."""
        position = self.index_of(image_id)
        shard, row, k = int(self._shard[position]), int(self._row[position]), int(self._num_boxes[position])
        handle = self._file(shard)

        def load(name: str) -> np.ndarray:
            return self._guarded(shard, lambda: handle[name][row])

        return RegionRecord(image_id=image_id, features=load("features")[:k].astype(np.float32),
                            boxes=load("boxes")[:k], object_ids=load("object_ids")[:k].astype(np.int64),
                            object_conf=load("object_conf")[:k], attr_ids=load("attr_ids")[:k].astype(np.int64),
                            attr_conf=load("attr_conf")[:k], image_hw=tuple(int(v) for v in load("image_hw")))

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _checked(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)}); got min {positions.min()}, max {positions.max()}")
        return positions

    def _file(self, shard: int) -> h5py.File:
        if os.getpid() != self._pid:
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = open_shard(shard_path(self.store_dir, shard))
        return self._handles[shard]

    def _guarded(self, shard: int, action: Any) -> Any:
        try:
            return action()
        except OSError as error:
            problem = f"read failed, the shard is truncated or corrupt ({error}); run `python -m pipeline.store verify`"
            raise InputError(shard_path(self.store_dir, shard), problem + " and re-extract it") from error
