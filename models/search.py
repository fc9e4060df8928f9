"""Search with a trained model: text -> top-k images of a feature store, image -> top-k captions.

``SearchIndex.open(checkpoint, store, vocab)`` encodes every image of the store once into the
joint space (held in memory, (n_img, K, d) float32); queries are then encoded and ranked by
``models.retrieval`` in exact or two-stage mode.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from models.compat import load_model_with_vocab
from models.data import pad_captions
from models.encoders import SCANModel
from models.retrieval import MODES, Embeddings, Ranking, pooled, search
from pipeline.atomic import write_text_atomic
from pipeline.captions import Vocabulary, read_captions, tokenize
from pipeline.errors import InputError
from pipeline.store import StoreReader

IMAGE_PREFIX = "image:"


@dataclass(frozen=True)
class SearchConfig:
    """How queries are answered."""

    top_k: int = field(default=10, metadata={"help": "Results per query."})
    mode: str = field(default="two-stage", metadata={
        "help": "exact | two-stage (pooled shortlist, then SCAN re-ranking).", "choices": MODES})
    shortlist: int = field(default=500, metadata={
        "help": "Two-stage: gallery items re-ranked per query (N); 500 lost <= 1 point of R@10 in "
                "benchmarks/bench_search.py."})
    batch_size: int = field(default=128, metadata={"help": "Batch size for encoding images and captions."})
    score_memory_mb: int = field(default=256, metadata={"help": "Memory budget of one block of SCAN scores."})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {', '.join(MODES)}")
        if self.top_k < 1 or self.shortlist < 1 or self.batch_size < 1:
            raise ValueError("top_k, shortlist and batch_size must be >= 1")


@dataclass(frozen=True)
class Hit:
    """One result: an image (text queries) or a caption with the image it describes, if known."""

    rank: int
    score: float
    image_id: str | None
    caption: str | None = None


@dataclass(frozen=True)
class QueryResult:
    query: str
    kind: str          # "text" | "image"
    hits: list[Hit]


@dataclass(frozen=True)
class CaptionSet:
    """Candidate captions for image queries, with the image each belongs to (None when unknown)."""

    texts: list[str]
    image_ids: list[str | None]


class SearchIndex:
    """A model plus the encoded images of one store; answers text and image queries."""

    def __init__(self, model: SCANModel, vocab: Vocabulary, store: StoreReader, batch_size: int = 128) -> None:
        self.model, self.vocab, self.store = model.eval(), vocab, store
        self.images = self._encode_store(batch_size)
        self._images_pooled = pooled(self.images)

    @classmethod
    def open(cls, checkpoint: str | PathLike[str], store_dir: str | PathLike[str], vocab_path: str | PathLike[str],
             *, batch_size: int = 128) -> SearchIndex:
        loaded, vocab = load_model_with_vocab(checkpoint, vocab_path)
        return cls(loaded.model, vocab, StoreReader(store_dir), batch_size)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 128) -> Embeddings:
        """Word embeddings (n, W, d) of captions tokenised as SCAN does (<start> ... <end>)."""
        token_ids = [self.vocab.encode(tokenize(text)) for text in texts]
        width = max(len(ids) for ids in token_ids)
        parts = []
        for start in range(0, len(token_ids), batch_size):
            tokens, lengths = pad_captions(token_ids[start:start + batch_size])
            emb, _ = self.model.txt_enc(tokens, lengths)
            parts.append(torch.nn.functional.pad(emb, (0, 0, 0, width - emb.size(1))))
        return Embeddings(torch.cat(parts), np.array([len(ids) for ids in token_ids]))

    def search_text(self, texts: Sequence[str], config: SearchConfig = SearchConfig()) -> list[QueryResult]:
        """Top-k store images for each text."""
        ranking = search(self.encode_texts(texts, config.batch_size), self.images, True, self.model.config,
                         config.top_k, mode=config.mode, shortlist_size=config.shortlist,
                         gallery_pooled=self._images_pooled, memory_mb=config.score_memory_mb)
        ids = self.store.image_ids
        return [QueryResult(text, "text", hits) for text, hits in
                zip(texts, _hits(ranking, lambda i: (ids[i], None)))]

    def search_images(self, image_ids: Sequence[str], captions: CaptionSet,
                      config: SearchConfig = SearchConfig()) -> list[QueryResult]:
        """Top-k captions of ``captions`` for each store image."""
        try:
            rows = [self.store.index_of(image_id) for image_id in image_ids]
        except KeyError as error:
            raise InputError(self.store.store_dir, str(error.args[0])) from None
        queries = Embeddings(*self.images.take(np.asarray(rows)))
        gallery = self.encode_texts(captions.texts, config.batch_size)
        ranking = search(queries, gallery, False, self.model.config, config.top_k, mode=config.mode,
                         shortlist_size=config.shortlist, memory_mb=config.score_memory_mb)
        return [QueryResult(image_id, "image", hits) for image_id, hits in
                zip(image_ids, _hits(ranking, lambda i: (captions.image_ids[i], captions.texts[i])))]

    @torch.no_grad()
    def _encode_store(self, batch_size: int) -> Embeddings:
        parts, lens = [], []
        for start in range(0, len(self.store), batch_size):
            features, num_boxes = self.store.read(np.arange(start, min(start + batch_size, len(self.store))))
            parts.append(self.model.img_enc(torch.from_numpy(features)))
            lens.append(num_boxes)
        if not parts:
            raise InputError(self.store.store_dir, "the store holds no images")
        return Embeddings(torch.cat(parts), np.concatenate(lens))


def _hits(ranking: Ranking, describe) -> list[list[Hit]]:
    rows = []
    for indices, scores in zip(ranking.indices.tolist(), ranking.scores.tolist()):
        rows.append([Hit(rank, score, *describe(index)) for rank, (index, score) in
                     enumerate(zip(indices, scores), start=1)])
    return rows


def load_caption_set(path: str | PathLike[str], split: str | None = None) -> CaptionSet:
    """Captions from our Parquet table (optionally one split) or a text file, one caption a line."""
    path = Path(path)
    if path.suffix == ".parquet":
        table = read_captions(path, split)
        return CaptionSet(table.column("raw").to_pylist(), table.column("image_id").to_pylist())
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"unreadable captions file ({error})") from error
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise InputError(path, "no captions in the file")
    return CaptionSet(texts, [None] * len(texts))


def read_queries(path: str | PathLike[str]) -> tuple[list[str], list[str]]:
    """(texts, image ids) from a file: one query a line, ``image:<id>`` for an image query."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"unreadable queries file ({error})") from error
    texts, images = [], []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line.startswith(IMAGE_PREFIX):
            image_id = line[len(IMAGE_PREFIX):].strip()
            if not image_id:
                raise InputError(path, "image query without an id", location=f"line {number}")
            images.append(image_id)
        elif line:
            texts.append(line)
    if not texts and not images:
        raise InputError(path, "no queries in the file")
    return texts, images


def format_results(results: Sequence[QueryResult]) -> str:
    """A readable table per query: rank, score, image id, caption."""
    blocks = []
    for result in results:
        lines = [f"{result.kind} query: {result.query}", f"{'rank':>4}  {'score':>8}  {'image':<16} caption"]
        lines += [f"{h.rank:>4}  {h.score:8.4f}  {str(h.image_id or '-'):<16} {h.caption or ''}" for h in result.hits]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def save_results(results: Sequence[QueryResult], config: SearchConfig, path: str | PathLike[str]) -> Path:
    """``{"config": {...}, "queries": [{"query", "kind", "hits": [{rank, score, image_id, caption}]}]}``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"config": asdict(config), "queries": [asdict(result) for result in results]}
    write_text_atomic(path, json.dumps(document, indent=2))
    return path


def answer_queries(index: SearchIndex, texts: Sequence[str], image_ids: Sequence[str], captions: CaptionSet | None,
                   config: SearchConfig = SearchConfig()) -> list[QueryResult]:
    """Text queries (top-k images) then image queries (top-k of `captions`, required for them)."""
    if image_ids and captions is None:
        raise InputError("image queries", "image queries need captions to rank (--captions)")
    results = index.search_text(texts, config) if texts else []
    if image_ids:
        results += index.search_images(image_ids, captions, config)
    return results
