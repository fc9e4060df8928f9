"""Search with a trained model: text -> top-k images of a feature store, image -> top-k captions.

``SearchIndex.open(checkpoint, store, vocab)`` opens the store's saved search index for that
checkpoint (``models.index``: built, updated with new images, or rebuilt when stale, as the policy
allows), so the gallery is encoded once and read from disk: FAISS over the global vectors, region
embeddings read row by row. Queries are ranked by ``models.retrieval``: ``exact`` (SCAN over every
image), ``two-stage`` (the index's shortlist re-ranked by SCAN) or ``global`` (the index alone).
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
from models.index import POLICIES, GalleryIndex, ensure_index
from models.query_encoder import QUERY_ENCODERS, query_text_encoder, resolve_query_encoder
from models.retrieval import MODES, Embeddings, Ranking, exact_search, global_search, two_stage_search
from models.vector_index import DEFAULT_NPROBE, VectorIndex
from pipeline.atomic import write_text_atomic
from pipeline.captions import Vocabulary, read_captions, tokenize
from pipeline.errors import InputError

IMAGE_PREFIX = "image:"


@dataclass(frozen=True)
class SearchConfig:
    """How queries are answered."""

    top_k: int = field(default=10, metadata={"help": "Results per query."})
    mode: str = field(default="two-stage", metadata={
        "help": "exact (SCAN over every item) | two-stage (the global head's shortlist from the vector index, "
                "re-ranked by SCAN) | global (the global head alone).", "choices": MODES})
    shortlist: int = field(default=100, metadata={
        "help": "Two-stage: gallery items re-ranked per query (N); see README for the recall measured per N."})
    batch_size: int = field(default=128, metadata={"help": "Batch size for encoding images and captions."})
    score_memory_mb: int = field(default=256, metadata={"help": "Memory budget of one block of SCAN scores."})
    query_batch: int = field(default=64, metadata={"help": "Two-stage: queries re-ranked together."})
    nprobe: int = field(default=DEFAULT_NPROBE, metadata={
        "help": "IVF index (large galleries): inverted lists scanned per query."})
    query_encoder: str = field(default="auto", metadata={
        "help": "Caption encoder for queries and caption galleries: int8 (the GRU's weights dynamically quantized: "
                "~4x faster per query on the CPU, recall within a point on the demo; see README) | float32 (the "
                "trained model as it is, as `evaluate` uses it) | auto (float32 for exact, int8 for two-stage and "
                "global).", "choices": QUERY_ENCODERS})
    index_policy: str = field(default="build", metadata={
        "help": "build: use the store's saved index, updating it with new images or rebuilding it when stale | "
                "require: use it only if up to date, else stop with the reason.", "choices": POLICIES})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {', '.join(MODES)}")
        if self.query_encoder not in QUERY_ENCODERS:
            raise ValueError(f"query_encoder={self.query_encoder!r}; expected one of {', '.join(QUERY_ENCODERS)}")
        if min(self.top_k, self.shortlist, self.batch_size, self.query_batch, self.nprobe) < 1:
            raise ValueError("top_k, shortlist, batch_size, query_batch and nprobe must be >= 1")


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


@dataclass(frozen=True)
class EncodedCaptions:
    """A caption gallery encoded once, for a caller (the search service) that ranks it for many image queries."""

    captions: CaptionSet
    emb: Embeddings
    vectors: VectorIndex | None   # the first stage over their global vectors; None when only exact search is used


class SearchIndex:
    """A model plus the saved search index of one store; answers text and image queries."""

    def __init__(self, model: SCANModel, vocab: Vocabulary, gallery: GalleryIndex, status: str = "") -> None:
        self.model, self.vocab, self.gallery, self.status = model.eval(), vocab, gallery, status
        self._text_encoders = {"float32": model.txt_enc}

    @classmethod
    def open(cls, checkpoint: str | PathLike[str], store_dir: str | PathLike[str], vocab_path: str | PathLike[str],
             *, policy: str = "build", kind: str = "auto") -> SearchIndex:
        """Loads the model and the store's index for it (``models.index.ensure_index`` with ``policy``)."""
        loaded, vocab = load_model_with_vocab(checkpoint, vocab_path)
        gallery, status = ensure_index(loaded.model, store_dir, checkpoint, policy=policy, kind=kind)
        return cls(loaded.model, vocab, gallery, status)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], config: SearchConfig = SearchConfig()) -> Embeddings:
        """Word embeddings (n, W, d) of captions tokenised as SCAN does (<start> ... <end>), by the
        ``config.query_encoder`` encoder for ``config.mode`` (the int8 one is made once, on first use)."""
        precision = resolve_query_encoder(config.query_encoder, config.mode)
        if precision not in self._text_encoders:
            self._text_encoders[precision] = query_text_encoder(self.model.txt_enc, precision)
        encoder, batch_size = self._text_encoders[precision], config.batch_size
        token_ids = [self.vocab.encode(tokenize(text)) for text in texts]
        width = max(len(ids) for ids in token_ids)
        parts = []
        for start in range(0, len(token_ids), batch_size):
            tokens, lengths = pad_captions(token_ids[start:start + batch_size])
            emb, _ = encoder(tokens, lengths)
            parts.append(torch.nn.functional.pad(emb, (0, 0, 0, width - emb.size(1))))
        return Embeddings(torch.cat(parts), np.array([len(ids) for ids in token_ids]))

    @torch.no_grad()
    def text_vectors(self, texts: Embeddings) -> np.ndarray:
        """(n, d) global vectors of encoded captions."""
        return self.model.text_vectors(texts.emb, torch.as_tensor(texts.lens)).numpy()

    def search_text(self, texts: Sequence[str], config: SearchConfig = SearchConfig()) -> list[QueryResult]:
        """Top-k store images for each text."""
        queries = self.encode_texts(texts, config)
        self.gallery.vectors.set_nprobe(config.nprobe)
        ranking = _rank(queries, lambda: self.text_vectors(queries), self.gallery.regions, self.gallery.vectors,
                        True, self.model, config)
        ids = self.gallery.image_ids
        return [QueryResult(text, "text", hits) for text, hits in
                zip(texts, _hits(ranking, lambda i: (ids[i], None)))]

    def encode_captions(self, captions: CaptionSet, config: SearchConfig = SearchConfig(), *,
                        with_vectors: bool = True) -> EncodedCaptions:
        """The captions' word embeddings and, ``with_vectors``, a flat FAISS index of their global vectors."""
        emb = self.encode_texts(captions.texts, config)
        return EncodedCaptions(captions, emb,
                               VectorIndex.build(self.text_vectors(emb), "flat") if with_vectors else None)

    def search_images(self, image_ids: Sequence[str], captions: CaptionSet | EncodedCaptions,
                      config: SearchConfig = SearchConfig()) -> list[QueryResult]:
        """Top-k of ``captions`` for each store image (a plain CaptionSet is encoded for this call)."""
        try:
            rows = np.asarray([self.gallery.row_of(image_id) for image_id in image_ids])
        except KeyError as error:
            raise InputError(self.gallery.directory, str(error.args[0])) from None
        queries = Embeddings(*self.gallery.regions.take(rows))
        encoded = captions if isinstance(captions, EncodedCaptions) else \
            self.encode_captions(captions, config, with_vectors=config.mode != "exact")
        if encoded.vectors is None and config.mode != "exact":
            raise ValueError(f"mode {config.mode!r} needs the captions' global vectors (encode_captions with_vectors)")
        ranking = _rank(queries, lambda: self.gallery.global_vectors(rows), encoded.emb, encoded.vectors, False,
                        self.model, config)
        texts, owners = encoded.captions.texts, encoded.captions.image_ids
        return [QueryResult(image_id, "image", hits) for image_id, hits in
                zip(image_ids, _hits(ranking, lambda i: (owners[i], texts[i])))]


def _rank(queries: Embeddings, query_vectors, gallery: Embeddings, first_stage: VectorIndex | None,
          queries_are_text: bool, model: SCANModel, config: SearchConfig) -> Ranking:
    """The ranking of ``config.mode``; ``query_vectors()`` gives the queries' global vectors when needed."""
    if config.mode == "exact":
        return exact_search(queries, gallery, queries_are_text, model.config, config.top_k,
                            memory_mb=config.score_memory_mb)
    if config.mode == "global":
        return global_search(query_vectors(), first_stage, config.top_k)
    return two_stage_search(queries, query_vectors(), gallery, first_stage, queries_are_text, model.config,
                            config.top_k, config.shortlist, query_batch=config.query_batch)


def _hits(ranking: Ranking, describe) -> list[list[Hit]]:
    rows = []
    for indices, scores in zip(ranking.indices.tolist(), ranking.scores.tolist()):
        found = [(index, score) for index, score in zip(indices, scores) if index >= 0]
        rows.append([Hit(rank, score, *describe(index)) for rank, (index, score) in enumerate(found, start=1)])
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
