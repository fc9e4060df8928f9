"""The search index of a feature store for one checkpoint: an artifact saved beside the store.

``<store>.search/<checkpoint sha256[:16]>/`` holds what search needs, so a query never re-encodes
the gallery and never holds it in memory:

    index.json             what it was built from (checkpoint sha256, store.json hash), item count,
                           region width, head kind, the current generation's files; written last
    items-<g>.parquet      image_id, sha256 (from the store's manifest), num_boxes, one row per item
    vectors-<g>.faiss      the FAISS index of the items' global vectors (models.vector_index)
    regions.f16            (items, R, d) float16 region embeddings, read row by row by the re-ranking
    globals.f16            (items, d) float16 global vectors, so the FAISS structure can be rebuilt
                           (e.g. flat -> IVF as the gallery grows) without encoding an image again

``check_index`` compares it with the store: fresh, grown (only new images: ``update`` encodes and
appends just those), or stale (the store changed otherwise, or was replaced) / missing. A changed
checkpoint has another sha256, hence another folder: its index is missing, never mixed up.
Updates append to the raw files past the committed count, then publish the new generation's
FAISS and items files, then ``index.json``; a crash before that last rename leaves the previous
generation intact and the extra bytes are cut off by the next update.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models.encoders import SCANModel
from models.retrieval import Embeddings
from models.vector_index import FLAT_LIMIT, VectorIndex
from pipeline.atomic import write_parquet_atomic, write_text_atomic
from pipeline.errors import InputError
from pipeline.hashing import sha256_file
from pipeline.store import StoreReader
from pipeline.store.layout import MANIFEST, STORE_JSON

log = logging.getLogger(__name__)
INDEX_FORMAT = "scan-pipeline-search/1"
INDEX_JSON = "index.json"
REGIONS_FILE = "regions.f16"
GLOBALS_FILE = "globals.f16"
KEY_LENGTH = 16
ENCODE_BATCH = 256


def index_dir(store_dir: str | PathLike[str], checkpoint_sha256: str) -> Path:
    """Where the index of this store for this checkpoint lives: beside the store, keyed by the checkpoint."""
    store_dir = Path(store_dir)
    return store_dir.with_name(f"{store_dir.name}.search") / checkpoint_sha256[:KEY_LENGTH]


@dataclass(frozen=True)
class IndexState:
    """How a saved index relates to the store now: "fresh", "grown" (``added`` rows of the store
    to encode), "stale" or "missing", with the reason in words."""

    status: str
    reason: str
    added: tuple[int, ...] = ()


@dataclass
class GalleryIndex:
    """An opened index: item ids, region embeddings (read from the file on demand) and global vectors (FAISS)."""

    directory: Path
    info: dict
    image_ids: list[str]
    regions: Embeddings
    vectors: VectorIndex
    _rows: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def row_of(self, image_id: str) -> int:
        if self._rows is None:
            self._rows = {name: row for row, name in enumerate(self.image_ids)}
        try:
            return self._rows[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in the search index {self.directory}") from None

    def global_vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), d) float32 stored global vectors of items ``rows``."""
        stored = RowFile(self.directory / GLOBALS_FILE, (len(self), self.info["dim"]))
        return np.asarray(stored[np.asarray(rows)], dtype=np.float32)


class RowFile:
    """Rows of a raw float16 (n, ...) file, read with positional reads into fresh arrays.

    Nothing stays mapped, so the process's resident set holds only the rows asked for: a memory map
    of a file whose pages sit in the page cache as large folios (ext4 on Linux >= 6.16 writes them)
    maps a whole folio per fault, and 5,000 scattered re-ranking reads of a freshly written 1.2 GB
    file left all 1.2 GB resident (measured; 44 MB from a cold cache). One pass over a file larger
    than memory (adding a million global vectors to FAISS, exact search) keeps only a chunk resident.
    """

    dtype = np.dtype(np.float16)

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path, self.shape = Path(path), tuple(shape)
        self._row_bytes = int(np.prod(shape[1:])) * 2
        if self.shape[0] and (not self.path.is_file() or self.path.stat().st_size < self.shape[0] * self._row_bytes):
            raise InputError(self.path, f"shorter than the {self.shape[0]} items the index lists; rebuild the index")

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """All rows (``np.asarray(row_file)``)."""
        return self[:] if dtype is None else self[:].astype(dtype)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        """Row ``key``, rows ``start:stop`` (step 1), or rows at the integer array ``key`` in its order."""
        if isinstance(key, (int, np.integer)):
            return self[np.array([key + len(self) if key < 0 else key])][0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError(f"{self.path}: only contiguous slices are read, not step {step}")
            return self._read_runs(np.array([start]), np.array([max(0, stop - start)]))
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: rows outside 0..{len(self) - 1}")
        unique, inverse = np.unique(rows, return_inverse=True)
        run_starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
        lengths = np.diff(np.append(run_starts, len(unique)))
        return self._read_runs(unique[run_starts], lengths)[inverse.reshape(-1)]

    def _read_runs(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Runs of consecutive rows, one read each, concatenated."""
        out = np.empty((int(lengths.sum()), *self.shape[1:]), dtype=np.float16)
        if not len(out):
            return out
        flat = out.reshape(len(out), -1).view(np.uint8)
        with open(self.path, "rb", buffering=0) as handle:
            done = 0
            for start, length in zip(starts.tolist(), lengths.tolist()):
                want = length * self._row_bytes
                got = os.preadv(handle.fileno(), [flat[done:done + length].reshape(-1)], start * self._row_bytes)
                if got != want:
                    raise InputError(self.path, f"ends before row {start + length}; rebuild the index")
                done += length
        return out


def checkpoint_key(checkpoint: str | PathLike[str]) -> str:
    return sha256_file(checkpoint)


def check_index(store_dir: str | PathLike[str], checkpoint_sha256: str) -> IndexState:
    """Whether the saved index of (store, checkpoint) can serve queries as it is."""
    folder = index_dir(store_dir, checkpoint_sha256)
    info = _read_info(folder)
    if info is None:
        return IndexState("missing", f"no search index for this checkpoint in {folder.parent}")
    if info.get("format") != INDEX_FORMAT or info.get("checkpoint_sha256") != checkpoint_sha256:
        return IndexState("stale", f"{folder / INDEX_JSON} was written for another checkpoint or format")
    if info.get("store_json_sha256") != sha256_file(Path(store_dir) / STORE_JSON):
        return IndexState("stale", f"the store's {STORE_JSON} changed since the index was built (another store)")
    indexed = pq.read_table(folder / info["items_file"], columns=["image_id", "sha256"]).slice(0, info["count"])
    was = dict(zip(indexed.column("image_id").to_pylist(), indexed.column("sha256").to_pylist()))
    manifest = pq.read_table(Path(store_dir) / MANIFEST, columns=["image_id", "sha256"]).to_pydict()
    now = dict(zip(manifest["image_id"], manifest["sha256"]))
    changed = [image_id for image_id, sha in was.items() if now.get(image_id) != sha]
    if changed:
        return IndexState("stale", f"{len(changed)} indexed images changed or left the store since the index was "
                                   f"built (e.g. {changed[:3]})")
    added = tuple(row for row, image_id in enumerate(manifest["image_id"]) if image_id not in was)
    if added:
        return IndexState("grown", f"{len(added)} images were added to the store since the index was built", added)
    return IndexState("fresh", f"up to date ({len(was)} images)")


def build_index(model: SCANModel, store_dir: str | PathLike[str], checkpoint_sha256: str, *,
                kind: str = "auto", batch_size: int = ENCODE_BATCH) -> GalleryIndex:
    """Encodes every image of the store and writes the index from scratch (replacing a stale one)."""
    store = StoreReader(store_dir)
    if not len(store):
        raise InputError(store.store_dir, "the store holds no images")
    folder = index_dir(store_dir, checkpoint_sha256)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX_JSON).unlink(missing_ok=True)  # from here on the old contents are not an index
    info = {"format": INDEX_FORMAT, "checkpoint_sha256": checkpoint_sha256, "count": 0, "generation": 0,
            "store_json_sha256": sha256_file(store.store_dir / STORE_JSON), "head": model.head_kind,
            "dim": model.config.embed_size, "regions": store.info.max_boxes, "kind": kind}
    for name in (REGIONS_FILE, GLOBALS_FILE):
        (folder / name).write_bytes(b"")
    return _append(model, store, folder, info, np.arange(len(store)), None, batch_size)


def update_index(model: SCANModel, store_dir: str | PathLike[str], checkpoint_sha256: str, added: tuple[int, ...], *,
                 batch_size: int = ENCODE_BATCH) -> GalleryIndex:
    """Encodes only the store rows ``added`` (from ``check_index``) and appends them to the index."""
    folder = index_dir(store_dir, checkpoint_sha256)
    info = _read_info(folder)
    current = open_index(store_dir, checkpoint_sha256)
    return _append(model, StoreReader(store_dir), folder, info, np.asarray(added, dtype=np.int64), current.vectors,
                   batch_size)


def open_index(store_dir: str | PathLike[str], checkpoint_sha256: str) -> GalleryIndex:
    """The saved index as it is (check it first with ``check_index``)."""
    folder = index_dir(store_dir, checkpoint_sha256)
    info = _read_info(folder)
    if info is None:
        raise InputError(folder, "no search index here")
    items = pq.read_table(folder / info["items_file"]).slice(0, info["count"]).to_pydict()
    shape = (info["count"], info["regions"], info["dim"])
    regions = Embeddings(RowFile(folder / REGIONS_FILE, shape), np.asarray(items["num_boxes"], dtype=np.int64))
    return GalleryIndex(folder, info, items["image_id"], regions, VectorIndex.load(folder / info["vectors_file"]))


POLICIES = ("build", "require")


def ensure_index(model: SCANModel, store_dir: str | PathLike[str], checkpoint: str | PathLike[str], *,
                 policy: str = "build", kind: str = "auto") -> tuple[GalleryIndex, str]:
    """The saved index of (store, checkpoint), ready to use, and what was done, in words.

    ``build``: a fresh index is used; a grown one is updated with the new images only; a missing or
    stale one is (re)built. ``require``: only a fresh index is used; anything else is refused with
    an InputError that says why and how to build it. A stale index is never used.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}; expected one of {', '.join(POLICIES)}")
    key = checkpoint_key(checkpoint)
    state = check_index(store_dir, key)
    if state.status == "fresh":
        return open_index(store_dir, key), f"search index {index_dir(store_dir, key)}: {state.reason}"
    if policy == "require":
        raise InputError(index_dir(store_dir, key), f"search index not usable: {state.reason}; build it with "
                                                     "`python -m models index` or the BuildSearchIndex task")
    if state.status == "grown":
        return update_index(model, store_dir, key, state.added), f"search index updated: {state.reason}, encoded " \
                                                                 f"and added only those"
    log.warning("search index %s: %s; building it", index_dir(store_dir, key), state.reason)
    built = build_index(model, store_dir, key, kind=kind)
    return built, f"search index built ({state.reason}): {len(built)} images, {built.vectors.kind}"


def _append(model: SCANModel, store: StoreReader, folder: Path, info: dict, rows: np.ndarray,
            vectors: VectorIndex | None, batch_size: int) -> GalleryIndex:
    """Encodes store ``rows``, appends them past ``info["count"]`` and commits a new generation."""
    count, dim, width = info["count"], info["dim"], info["regions"]
    for name, row_bytes in ((REGIONS_FILE, width * dim * 2), (GLOBALS_FILE, dim * 2)):
        with open(folder / name, "r+b") as handle:  # cut what an interrupted update left past the count
            handle.truncate(count * row_bytes)
    manifest = pq.read_table(store.store_dir / MANIFEST, columns=["image_id", "sha256"]).take(pa.array(rows))
    num_boxes = _encode_into(model, store, folder, rows, count, batch_size)
    new_globals = RowFile(folder / GLOBALS_FILE, (count + len(rows), dim))
    if vectors is None or (vectors.kind == "flat" and count + len(rows) > FLAT_LIMIT and info["kind"] == "auto"):
        vectors = VectorIndex.build(new_globals, info["kind"])   # from the stored vectors: no re-encoding
    else:
        vectors.add(new_globals[count:])
    generation = info["generation"] + 1
    old = _generation_files(info)
    previous = (pq.read_table(folder / info["items_file"]).slice(0, count) if count else None)
    items = pa.table({"image_id": manifest.column("image_id"), "sha256": manifest.column("sha256"),
                      "num_boxes": pa.array(num_boxes, pa.int32())})
    info = {**info, "count": count + len(rows), "generation": generation, "index_kind": vectors.kind,
            "items_file": f"items-{generation}.parquet", "vectors_file": f"vectors-{generation}.faiss"}
    write_parquet_atomic(folder / info["items_file"],
                         items if previous is None else pa.concat_tables([previous, items]))
    vectors.save(folder / info["vectors_file"])
    write_text_atomic(folder / INDEX_JSON, json.dumps(info, indent=2))
    for name in old:
        (folder / name).unlink(missing_ok=True)
    log.info("search index %s: %d images encoded and added (%d in all, %s)", folder, len(rows), info["count"],
             vectors.kind)
    return open_index(store.store_dir, info["checkpoint_sha256"])


@torch.no_grad()
def _encode_into(model: SCANModel, store: StoreReader, folder: Path, rows: np.ndarray, count: int,
                 batch_size: int) -> np.ndarray:
    """Region embeddings and global vectors of store ``rows`` appended to the raw files; returns num_boxes."""
    model.eval()
    lens = []
    with open(folder / REGIONS_FILE, "ab") as regions, open(folder / GLOBALS_FILE, "ab") as globals_:
        for start in range(0, len(rows), batch_size):
            features, num_boxes = store.read(rows[start:start + batch_size])
            emb = model.img_enc(torch.from_numpy(features))
            vectors = model.image_vectors(emb, torch.as_tensor(num_boxes, dtype=torch.long))
            regions.write(emb.numpy().astype(np.float16).tobytes())
            globals_.write(vectors.numpy().astype(np.float16).tobytes())
            lens.append(num_boxes)
    return np.concatenate(lens) if lens else np.empty(0, dtype=np.int64)


def _read_info(folder: Path) -> dict | None:
    try:
        return json.loads((folder / INDEX_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise InputError(folder / INDEX_JSON, f"unreadable search index description ({error}); rebuild it") from error


def _generation_files(info: dict) -> list[str]:
    return [info[key] for key in ("items_file", "vectors_file") if key in info]

