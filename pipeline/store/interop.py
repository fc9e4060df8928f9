"""Other feature formats in and out of a store.

In:  BUTD TSV (Caffe `generate_tsv.py` columns, or the airsplay/LXMERT variant with labels),
     MILVLG bottom-up-attention.pytorch per-image .npz, SCAN precomp `{split}_ims.npy`.
Out: SCAN precomp `{split}_ims.npy` (N, K, D) float32 + `{split}_caps.txt`.
"""
from __future__ import annotations

import base64
import binascii
import csv
import sys
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from pipeline.errors import InputError
from pipeline.atomic import atomic_output, write_text_atomic
from pipeline.store.layout import StoreInfo, completed_shards, init_store
from pipeline.store.planning import commit_manifest
from pipeline.store.reader import StoreReader
from pipeline.store.records import RegionRecord
from pipeline.store.safe_npz import load_npz
from pipeline.store.writer import ShardWriter

CAFFE_TSV_COLUMNS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
AIRSPLAY_TSV_COLUMNS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                        "num_boxes", "boxes", "features")
_TSV_ARRAYS = {"objects_id": np.int64, "objects_conf": np.float32, "attrs_id": np.int64, "attrs_conf": np.float32,
               "boxes": np.float32, "features": np.float32}
_EXPORT_BATCH = 256


def read_butd_tsv(path: str | PathLike[str]) -> Iterator[RegionRecord]:
    """Records of a BUTD TSV, either column layout (told apart by the number of columns).

    Arrays are base64 of raw little-endian buffers: float32 boxes/features/confidences, int64
    label ids. TSV ids index the vocabulary lines (0-based, background dropped); they are shifted
    by +1 to the store's detector class indices (0 = background), as MILVLG writes them.
    Caffe TSVs carry no labels: their object/attribute ids and confidences are 0.
    """
    csv.field_size_limit(sys.maxsize)
    layouts = {len(CAFFE_TSV_COLUMNS): CAFFE_TSV_COLUMNS, len(AIRSPLAY_TSV_COLUMNS): AIRSPLAY_TSV_COLUMNS}
    with open(path, newline="", encoding="ascii", errors="replace") as handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            for cells in reader:
                line = reader.line_num
                if line == 1 and cells and cells[0] in ("image_id", "img_id"):
                    continue
                if len(cells) not in layouts:
                    raise InputError(path, f"{len(cells)} columns; expected {len(CAFFE_TSV_COLUMNS)} (Caffe) or "
                                           f"{len(AIRSPLAY_TSV_COLUMNS)} (airsplay)", location=f"line {line}")
                yield _tsv_record(dict(zip(layouts[len(cells)], cells)), path, line)
        except csv.Error as error:
            raise InputError(path, f"malformed TSV ({error})", location=f"line {reader.line_num}") from error


def _tsv_record(row: dict[str, str], path: str | PathLike[str], line: int) -> RegionRecord:
    where = f"line {line}"
    try:
        k = int(row["num_boxes"])
        hw = (int(row.get("image_h", row.get("img_h"))), int(row.get("image_w", row.get("img_w"))))
    except ValueError as error:
        raise InputError(path, f"num_boxes / image size is not an integer ({error})", location=where) from error
    arrays = {name: _b64_array(row[name], dtype, path, f"{where}, column {name}")
              for name, dtype in _TSV_ARRAYS.items() if name in row}
    if k < 1 or arrays["features"].size % k or arrays["boxes"].size != 4 * k:
        raise InputError(path, f"num_boxes={k} does not match {arrays['boxes'].size} box values and "
                               f"{arrays['features'].size} feature values", location=where)
    zeros = np.zeros(k, dtype=np.float32)
    labels = {name: arrays.get(name, zeros) for name in ("objects_id", "objects_conf", "attrs_id", "attrs_conf")}
    if any(values.size != k for values in labels.values()):
        raise InputError(path, f"label columns do not have num_boxes={k} entries", location=where)
    shift = 1 if "objects_id" in arrays else 0
    return RegionRecord(image_id=row.get("image_id", row.get("img_id")), features=arrays["features"].reshape(k, -1),
                        boxes=arrays["boxes"].reshape(k, 4), object_ids=labels["objects_id"].astype(np.int64) + shift,
                        object_conf=labels["objects_conf"], attr_ids=labels["attrs_id"].astype(np.int64) + shift,
                        attr_conf=labels["attrs_conf"], image_hw=hw)


def _b64_array(text: str, dtype: type, path: str | PathLike[str], where: str) -> np.ndarray:
    if text.startswith("b'") and text.endswith("'"):
        text = text[2:-1]  # written by Python 3 ports that forgot .decode(): "b'AAAA'"
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InputError(path, f"invalid base64 ({error})", location=where) from error
    if len(raw) % np.dtype(dtype).itemsize:
        raise InputError(path, f"{len(raw)} bytes is not a whole number of {np.dtype(dtype).name}", location=where)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


def read_milvlg_npz(path: str | PathLike[str]) -> RegionRecord:
    """One image saved by MILVLG's `save_roi_features`: x (K, D), bbox (K, 4), num_bbox, image_h,
    image_w, and `info` (image_id, objects_id/objects_conf, attrs_id/attrs_conf when extracted)."""
    entries = load_npz(path)
    missing = [key for key in ("x", "bbox", "num_bbox", "image_h", "image_w") if key not in entries]
    if missing:
        raise InputError(path, f"missing entries {missing}; not a MILVLG roi_feats .npz (bbox-only files have no x)")
    info: dict[str, Any] = entries.get("info", {})
    if not isinstance(info, dict):
        raise InputError(path, f"entry 'info' is {type(info).__name__}; expected a dict")
    features = np.asarray(entries["x"], dtype=np.float32)
    k = int(entries["num_bbox"])
    if features.ndim != 2 or features.shape[0] != k:
        raise InputError(path, f"x has shape {features.shape} but num_bbox={k}")
    zeros = np.zeros(k, dtype=np.float32)
    labels = {name: np.asarray(info.get(name, zeros))
              for name in ("objects_id", "objects_conf", "attrs_id", "attrs_conf")}
    return RegionRecord(image_id=str(info.get("image_id", Path(path).stem)), features=features,
                        boxes=np.asarray(entries["bbox"], dtype=np.float32),
                        object_ids=labels["objects_id"].astype(np.int64),
                        object_conf=labels["objects_conf"].astype(np.float32),
                        attr_ids=labels["attrs_id"].astype(np.int64),
                        attr_conf=labels["attrs_conf"].astype(np.float32),
                        image_hw=(int(entries["image_h"]), int(entries["image_w"])))


def read_scan_precomp(ims_path: str | PathLike[str],
                      image_ids: Optional[Sequence[str]] = None) -> Iterator[RegionRecord]:
    """Rows of SCAN's `{split}_ims.npy` (N, K, D), memory-mapped. Ids default to the row numbers.

    Precomp files hold features only: boxes, labels are zeros and image_hw is (0, 0) (unknown).
    """
    try:
        images = np.load(ims_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(ims_path, f"not a readable .npy file ({error})") from error
    if images.ndim != 3:
        raise InputError(ims_path, f"shape {images.shape}; expected (n_images, regions, dim)")
    ids = [str(row) for row in range(len(images))] if image_ids is None else list(image_ids)
    if len(ids) != len(images):
        raise InputError(ims_path, f"{len(images)} images but {len(ids)} image ids were given")
    k = images.shape[1]
    for image_id, features in zip(ids, images):
        zeros = np.zeros(k, dtype=np.float32)
        yield RegionRecord(image_id=image_id, features=np.asarray(features, dtype=np.float32),
                           boxes=np.zeros((k, 4), np.float32), object_ids=zeros.astype(np.int64), object_conf=zeros,
                           attr_ids=zeros.astype(np.int64), attr_conf=zeros, image_hw=(0, 0))


def import_records(records: Iterable[RegionRecord], store_dir: str | PathLike[str], *, max_boxes: int,
                   feature_dtype: str = "float16", shard_size: int = 1000, source: str = "",
                   extractor: Optional[dict[str, Any]] = None) -> Path:
    """Write records into new shards of a store (created if needed), then commit its manifest.

    The feature dim comes from the first record; `source` (e.g. the TSV name) is kept as relpath.
    """
    iterator = iter(records)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"nothing to import into {store_dir}: the source holds no images")
    init_store(store_dir, StoreInfo(feature_dim=first.features.shape[1], max_boxes=max_boxes,
                                    feature_dtype=feature_dtype, extractor=extractor or {"imported_from": source}))
    index = max(completed_shards(store_dir), default=-1) + 1
    pending: Optional[RegionRecord] = first
    while pending is not None:
        with ShardWriter.for_store(store_dir, index) as writer:
            while pending is not None and len(writer) < shard_size:
                writer.append(pending, relpath=source)
                pending = next(iterator, None)
        index += 1
    return commit_manifest(store_dir)


def export_scan_precomp(store_dir: str | PathLike[str], out_dir: str | PathLike[str], split: str,
                        image_ids: Sequence[str], captions: Sequence[Sequence[str]]) -> tuple[Path, Path]:
    """Write `{split}_ims.npy` (N, K, D) float32 and `{split}_caps.txt` for the reference SCAN code.

    Every image needs the same number of captions (SCAN maps caption i to image i // per_image).
    The features are filled batch by batch into a memory-mapped file, so memory stays small.
    """
    per_image = {len(texts) for texts in captions}
    if len(captions) != len(image_ids) or len(per_image) != 1 or 0 in per_image:
        raise ValueError(f"need the same, non-zero number of captions for each of the {len(image_ids)} images; "
                         f"got {len(captions)} lists with counts {sorted(per_image)}")
    if any("\n" in text or "\r" in text for texts in captions for text in texts):
        raise ValueError("captions must not contain line breaks (one caption per line in the caps file)")
    store = StoreReader(store_dir)
    positions = np.array([store.index_of(image_id) for image_id in image_ids], dtype=np.int64)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ims_path, caps_path = out_dir / f"{split}_ims.npy", out_dir / f"{split}_caps.txt"
    shape = (len(positions), store.info.max_boxes, store.info.feature_dim)
    with atomic_output(ims_path) as temp:
        ims = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=shape)
        for start in range(0, len(positions), _EXPORT_BATCH):
            ims[start:start + _EXPORT_BATCH] = store.read(positions[start:start + _EXPORT_BATCH])[0]
        ims.flush()
        del ims
    write_text_atomic(caps_path, "".join(f"{text}\n" for texts in captions for text in texts))
    store.close()
    return ims_path, caps_path
