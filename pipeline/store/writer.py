"""Write one shard: records appended to a temp HDF5 file, published by rename on clean exit.

Shard datasets (N images, K = max_boxes, D = feature_dim; rows past num_boxes are zeros):
    features (N, K, D) float16|float32, one chunk per image   boxes (N, K, 4) float32
    num_boxes (N,) int32   object_ids / attr_ids (N, K) int32   object_conf / attr_conf (N, K) float32
    image_hw (N, 2) int32  image_ids / relpaths / sha256 (N,) utf-8 strings
    failures/{image_id, relpath, sha256, reason} for images the extractor could not read.
"""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping, NamedTuple, Optional

import h5py
import numpy as np

from pipeline.errors import InputError
from pipeline.atomic import publish, temp_path_for
from pipeline.store.layout import STORE_JSON, StoreInfo, check_same_store, read_store_info, shard_path
from pipeline.store.records import RegionRecord

_GROW = 64
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_STRING = h5py.string_dtype("utf-8")
_TEXT_COLUMNS = ("image_ids", "relpaths", "sha256")
_FAILURE_COLUMNS = ("image_id", "relpath", "sha256", "reason")
_PADDED = {"boxes": ((4,), np.float32), "object_ids": ((), np.int32), "object_conf": ((), np.float32),
           "attr_ids": ((), np.int32), "attr_conf": ((), np.float32)}


class _Row(NamedTuple):
    """What a shard keeps in memory per image until it closes: everything except the features."""

    image_id: str
    relpath: str
    sha256: str
    num_boxes: int
    image_hw: tuple[int, int]
    regions: dict[str, np.ndarray]


class ShardWriter:
    """Context manager writing one shard; a crash or an exception leaves no shard file visible.

    `attrs` may hold "extractor" (config dict) and "weights_sha256"; with D, K and the dtype they
    form the shard's StoreInfo. If `path` lies in `<store>/shards/`, that store's store.json must
    agree, so one store never mixes features from different extractors.
    """

    def __init__(self, path: str | PathLike[str], *, max_boxes: int, feature_dim: int,
                 feature_dtype: str = "float16", attrs: Mapping[str, Any] = {}) -> None:
        self.path = Path(path)
        extra = {key: value for key, value in attrs.items() if key not in ("extractor", "weights_sha256")}
        self.info = StoreInfo(feature_dim=feature_dim, max_boxes=max_boxes, feature_dtype=feature_dtype,
                              extractor=dict(attrs.get("extractor", {})),
                              weights_sha256=str(attrs.get("weights_sha256", "")))
        self._extra_attrs = {key: json.dumps(value, default=str) for key, value in extra.items()}
        self._temp = temp_path_for(self.path)
        self._file: Optional[h5py.File] = None
        self._features: Optional[h5py.Dataset] = None
        self._rows: list[_Row] = []
        self._count = 0
        self._seen: set[str] = set()
        self._failures: list[tuple[str, str, str, str]] = []

    @classmethod
    def for_store(cls, store_dir: str | PathLike[str], shard_index: int,
                  shard_attrs: Mapping[str, Any] = {}) -> "ShardWriter":
        """Writer for shard `shard_index` of an initialised store, configured from its store.json.

        `shard_attrs` are this shard's own (JSON) attributes, e.g. how it was computed; never part of the store's
        identity."""
        info = read_store_info(store_dir)
        return cls(shard_path(store_dir, shard_index), max_boxes=info.max_boxes, feature_dim=info.feature_dim,
                   feature_dtype=info.feature_dtype,
                   attrs={**shard_attrs, "extractor": info.extractor, "weights_sha256": info.weights_sha256})

    def __enter__(self) -> "ShardWriter":
        store_json = self.path.parent.parent / STORE_JSON
        if self.path.parent.name == "shards" and store_json.is_file():
            check_same_store(read_store_info(self.path.parent.parent), self.info, store_json)
        if self.path.exists():
            raise FileExistsError(f"{self.path}: shard already published; shards are immutable, write a new index")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self._temp, "w")
        shape = (self.info.max_boxes, self.info.feature_dim)
        self._features = self._file.create_dataset("features", shape=(0, *shape), maxshape=(None, *shape),
                                                   dtype=self.info.feature_dtype, chunks=(1, *shape), fillvalue=0)
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        assert self._file is not None, "ShardWriter used outside a with-block"
        handle, self._file, self._features = self._file, None, None
        published = False
        try:
            if kind is None:
                self._finish(handle)
                handle.close()
                publish(self._temp, self.path)
                published = True
        finally:
            handle.close()
            if not published:
                self._temp.unlink(missing_ok=True)

    def __len__(self) -> int:
        return self._count

    def append(self, record: RegionRecord, *, relpath: str = "", sha256: str = "") -> None:
        """Add one image; `relpath` / `sha256` name its source so re-runs can skip it when unchanged.

        Features go to disk at once (one chunk per image); the small per-image arrays are kept
        and written when the shard closes, which avoids a dozen tiny HDF5 writes per image.
        """
        assert self._features is not None, "append() outside the with-block"
        features = self._validated(record, relpath, sha256)
        k, row = record.num_boxes, self._count
        if row == self._features.shape[0]:
            self._features.resize(row + _GROW, axis=0)
        padded = np.zeros((self.info.max_boxes, self.info.feature_dim), dtype=features.dtype)
        padded[:k] = features
        self._features[row] = padded
        self._rows.append(_Row(record.image_id, relpath, sha256, k, tuple(record.image_hw),
                               {name: np.array(getattr(record, name)) for name in _PADDED}))
        self._seen.add(record.image_id)
        self._count += 1

    def add_failure(self, image_id: str, reason: str, *, relpath: str = "", sha256: str = "") -> None:
        """Remember an image the extractor could not read; it goes to failures.parquet."""
        self._failures.append((image_id, relpath, sha256, reason))

    def _finish(self, handle: h5py.File) -> None:
        """Trim features to the rows written, then write the per-image arrays and the attributes."""
        n, k = self._count, self.info.max_boxes
        handle["features"].resize(n, axis=0)
        for name, (trailing, dtype) in _PADDED.items():
            shape = (k, *trailing)
            values = np.zeros((n, *shape), dtype=dtype)
            for index, row in enumerate(self._rows):
                values[index, :row.num_boxes] = row.regions[name]
            handle.create_dataset(name, data=values, chunks=(min(n, _GROW), *shape) if n else None)
        handle.create_dataset("num_boxes",
                              data=np.array([row.num_boxes for row in self._rows], dtype=np.int32).reshape(n))
        handle.create_dataset("image_hw",
                              data=np.array([row.image_hw for row in self._rows], dtype=np.int32).reshape(n, 2))
        for name, attribute in zip(_TEXT_COLUMNS, ("image_id", "relpath", "sha256")):
            values = np.array([getattr(row, attribute) for row in self._rows], dtype=object).reshape(n)
            handle.create_dataset(name, data=values, dtype=_STRING)
        failures = handle.create_group("failures")
        for column, values in zip(_FAILURE_COLUMNS, zip(*self._failures) if self._failures else [()] * 4):
            failures.create_dataset(column, data=np.array(values, dtype=object).reshape(len(self._failures)),
                                    dtype=_STRING)
        handle.attrs["store_info"] = self.info.to_json()
        for key, value in self._extra_attrs.items():
            handle.attrs[key] = value

    def _validated(self, record: RegionRecord, *sources: str) -> np.ndarray:
        """Check one record against the shard's K, D and dtype; return its features in that dtype."""
        def bad(problem: str) -> InputError:
            return InputError(self.path, problem, location=f"image {record.image_id!r}")

        if not isinstance(record.image_id, str) or not record.image_id:
            raise bad("image_id must be a non-empty string")
        for text in (record.image_id, *sources):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise bad(f"{text!r} is not valid UTF-8 text ({error.reason})") from error
        if record.image_id in self._seen:
            raise bad("appears twice in this shard")
        features = np.asarray(record.features)
        k = features.shape[0] if features.ndim == 2 else -1
        if features.ndim != 2 or features.shape[1] != self.info.feature_dim or not 1 <= k <= self.info.max_boxes:
            raise bad(f"features have shape {features.shape}; "
                      f"expected (1..{self.info.max_boxes}, {self.info.feature_dim})")
        if not np.issubdtype(features.dtype, np.floating):
            raise bad(f"features have dtype {features.dtype}; expected a float dtype")
        expected = {"boxes": (k, 4), "object_ids": (k,), "object_conf": (k,), "attr_ids": (k,), "attr_conf": (k,)}
        for name, shape in expected.items():
            if np.shape(getattr(record, name)) != shape:
                raise bad(f"{name} has shape {np.shape(getattr(record, name))}; expected {shape}")
        for name in ("features", "boxes", "object_conf", "attr_conf"):
            if not np.isfinite(getattr(record, name)).all():
                raise bad(f"{name} contain NaN or Inf")
        if self.info.feature_dtype == "float16" and np.abs(features).max() > _FLOAT16_MAX:
            raise bad(f"features exceed the float16 range (|x| > {_FLOAT16_MAX:g}); use feature_dtype='float32'")
        if len(record.image_hw) != 2 or min(record.image_hw) < 0:
            raise bad(f"image_hw={record.image_hw!r}; expected (height, width), 0 meaning unknown")
        return features.astype(self.info.feature_dtype, copy=False)
