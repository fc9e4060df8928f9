"""What the search service answers, without HTTP: a model, a store and its index, loaded once, read only.

``SearchBackend.open`` loads the checkpoint, the vocabulary and the store's saved search index when it
is up to date (``models.index.check_index``); it never builds or updates the index, since the service
must not write into the store's folder: when the index is missing or stale the gallery is encoded
into memory instead, as search did before the index existed (slower start, same answers). Every
request value is checked here (``RequestError``), so the web layer only translates errors to 4xx.
Paths to image files come from the store's manifest, never from the request, and stay under the
images root.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from models.attention import PairAttention
from models.attention_viz import pair_attention
from models.compat import load_model_with_vocab
from models.encoders import SCANModel
from models.index import GalleryIndex, check_index, checkpoint_key, index_dir, open_index
from models.query_encoder import resolve_query_encoder
from models.retrieval import MODES, Embeddings
from models.search import EncodedCaptions, QueryResult, SearchConfig, SearchIndex, load_caption_set
from models.vector_index import VectorIndex
from pipeline.errors import InputError
from pipeline.store import StoreReader
from pipeline.store.layout import MANIFEST

MAX_QUERY_CHARS = 300
MAX_ID_CHARS = 200
MAX_K = 1000
ENCODE_BATCH = 256


class RequestError(ValueError):
    """A request the service refuses; ``status`` is the HTTP status (400, 404 or 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ServiceFiles:
    """What the service reads: the checkpoint, store and vocabulary, optional captions and image folder."""

    checkpoint: Path
    store: Path
    vocab: Path
    captions: Path | None = None
    images_root: Path | None = None


class SearchBackend:
    """Answers search, attention and image-file requests; one request computes at a time (the lock):
    torch already uses every core for one query, and queued requests keep memory flat."""

    def __init__(self, index: SearchIndex, store: StoreReader, captions: EncodedCaptions | None,
                 relpaths: dict[str, str], images_root: Path | None, config: SearchConfig) -> None:
        self.index, self.store, self.captions, self.config = index, store, captions, config
        self.relpaths, self.images_root = relpaths, images_root
        self._lock = threading.Lock()

    @classmethod
    def open(cls, files: ServiceFiles, config: SearchConfig = SearchConfig()) -> SearchBackend:
        loaded, vocab = load_model_with_vocab(files.checkpoint, files.vocab)
        gallery, status = read_only_gallery(loaded.model, files.store, files.checkpoint)
        index = SearchIndex(loaded.model, vocab, gallery, status)
        captions = None
        if files.captions is not None:
            # encoded once for every mode a request may ask, so with the encoder exact search needs
            once = replace(config, query_encoder=resolve_query_encoder(config.query_encoder, "exact"))
            captions = index.encode_captions(load_caption_set(files.captions), once)
        manifest = pq.read_table(files.store / MANIFEST, columns=["image_id", "relpath"]).to_pydict()
        root = None if files.images_root is None else files.images_root.resolve()
        if root is not None and not root.is_dir():
            raise InputError(files.images_root, "the images root is not a folder")
        return cls(index, StoreReader(files.store), captions, dict(zip(manifest["image_id"], manifest["relpath"])),
                   root, config)

    @property
    def status(self) -> str:
        return self.index.status

    def health(self) -> dict:
        return {"status": "ok", "images": len(self.index.gallery), "captions": len(self.captions.captions.texts)
                if self.captions else 0, "index": self.status, "images_root": self.images_root is not None,
                "head": self.index.model.head_kind}

    def search_text(self, text: str, k: int, mode: str) -> QueryResult:
        config = self._config(k, mode)
        with self._lock:
            return self.index.search_text([checked_text(text)], config)[0]

    def search_image(self, image_id: str, k: int, mode: str) -> QueryResult:
        config = self._config(k, mode)
        image_id = self.checked_id(image_id)
        if self.captions is None:
            raise RequestError(409, "image queries need captions: start the server with --captions")
        with self._lock:
            return self.index.search_images([image_id], self.captions, config)[0]

    def attention(self, image_id: str, text: str) -> PairAttention:
        image_id, text = self.checked_id(image_id), checked_text(text)
        with self._lock:
            return pair_attention(self.index.model, self.index.vocab, self.store, image_id, text)

    def image_file(self, image_id: str) -> Path:
        """The image's file under the images root (from the manifest's relpath); RequestError 404 otherwise."""
        image_id = self.checked_id(image_id)
        if self.images_root is None:
            raise RequestError(404, "no image files: the server was started without --images-root")
        path = (self.images_root / self.relpaths[image_id]).resolve()
        if not path.is_relative_to(self.images_root) or not path.is_file():
            raise RequestError(404, f"no image file for {image_id!r} under the images root")
        return path

    def checked_id(self, image_id: str) -> str:
        if not image_id or len(image_id) > MAX_ID_CHARS or image_id not in self.relpaths:
            raise RequestError(404, f"unknown image id {image_id[:MAX_ID_CHARS]!r}: not in the store")
        return image_id

    def _config(self, k: int, mode: str) -> SearchConfig:
        if not 1 <= k <= MAX_K:
            raise RequestError(400, f"k={k}: must be between 1 and {MAX_K}")
        if mode not in MODES:
            raise RequestError(400, f"mode={mode[:20]!r}: expected one of {', '.join(MODES)}")
        return replace(self.config, top_k=k, mode=mode, shortlist=max(self.config.shortlist, k))


def checked_text(text: str) -> str:
    """The query text, stripped; RequestError 400 when empty, too long or without a single word."""
    text = text.strip()
    if not text:
        raise RequestError(400, "empty query text")
    if len(text) > MAX_QUERY_CHARS:
        raise RequestError(400, f"query text of {len(text)} characters: at most {MAX_QUERY_CHARS}")
    return text


def read_only_gallery(model: SCANModel, store_dir: str | PathLike[str],
                      checkpoint: str | PathLike[str]) -> tuple[GalleryIndex, str]:
    """The store's saved index when fresh, else the gallery encoded in memory; nothing is written."""
    key = checkpoint_key(checkpoint)
    state = check_index(store_dir, key)
    if state.status == "fresh":
        return open_index(store_dir, key), f"search index {index_dir(store_dir, key)}: {state.reason}"
    gallery = encode_gallery(model, StoreReader(store_dir))
    return gallery, (f"search index not used ({state.reason}); the {len(gallery)} images were encoded in memory. "
                     "Build the index with `python -m models index` for a fast start")


@dataclass
class MemoryGallery(GalleryIndex):
    """A gallery encoded in memory: its global vectors are an array, not the saved index's file."""

    stored_vectors: np.ndarray | None = None

    def global_vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.stored_vectors[np.asarray(rows)]


@torch.no_grad()
def encode_gallery(model: SCANModel, store: StoreReader, batch_size: int = ENCODE_BATCH) -> MemoryGallery:
    """Every image's region embeddings and global vector, in memory, with a flat FAISS index."""
    if not len(store):
        raise InputError(store.store_dir, "the store holds no images")
    model.eval()
    regions, vectors, lens = [], [], []
    for start in range(0, len(store), batch_size):
        features, num_boxes = store.read(np.arange(start, min(start + batch_size, len(store))))
        emb = model.img_enc(torch.from_numpy(features))
        vectors.append(model.image_vectors(emb, torch.as_tensor(num_boxes, dtype=torch.long)).numpy())
        regions.append(emb)
        lens.append(num_boxes)
    info = {"count": len(store), "dim": model.config.embed_size, "head": model.head_kind, "in_memory": True}
    vectors = np.concatenate(vectors)
    return MemoryGallery(store.store_dir, info, list(store.image_ids),
                         Embeddings(torch.cat(regions), np.concatenate(lens)),
                         VectorIndex.build(vectors, "flat"), stored_vectors=vectors)
