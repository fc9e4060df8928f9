"""Ranking a gallery for a batch of queries: exact SCAN scores, or a pooled shortlist re-ranked.

Everything here works on embeddings already in the joint space. A gallery's embeddings may be a
tensor or any numpy array-like (an ``np.memmap``, or models.index's ``RowFile`` of a million images),
and are read in chunks, so exact search over a gallery larger than memory needs only one chunk at a time.

Two-stage search: a first stage (``FirstStage``: the FAISS index of models.index over the
global head's vectors) gives each query a shortlist of N gallery items, and only those are scored
with stacked cross attention, as (query, item) pairs for a batch of queries at a time. The global
mode returns the first stage's ranking itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from models.config import ModelConfig
from models.scan import paired_scores, scores_within_budget

MODES = ("exact", "two-stage", "global")
GALLERY_CHUNK = 8192   # gallery items scored per step by exact search
RERANK_QUERY_BATCH = 64  # queries re-ranked together
PAIR_CHUNK = 4096      # (query, item) pairs scored per call


class FirstStage(Protocol):
    """Inner-product search over the gallery's global vectors (models.index.VectorIndex)."""

    def search(self, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices) (n_query, n), best first; index -1 where the gallery has fewer items."""
        ...


@dataclass(frozen=True)
class Embeddings:
    """Items in the joint space: ``emb`` (n, L, d) tensor or numpy array-like, ``lens`` (n,) real lengths."""

    emb: Any
    lens: np.ndarray

    def __post_init__(self) -> None:
        if len(self.lens) != self.emb.shape[0]:
            raise ValueError(f"{len(self.lens)} lengths for {self.emb.shape[0]} items")

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """(emb (m, L, d) float32, lens (m,)) of items start..stop-1."""
        return _as_tensor(self.emb[start:stop]), torch.as_tensor(np.asarray(self.lens[start:stop]), dtype=torch.long)

    def take(self, index: np.ndarray) -> tuple[Tensor, Tensor]:
        """Items at ``index`` in that order; reads are sorted so a file is read forwards."""
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        picked = np.empty_like(order)
        picked[order] = np.arange(len(order))
        sorted_rows = _as_tensor(self.emb[torch.as_tensor(index[order])] if isinstance(self.emb, Tensor)
                                 else self.emb[index[order]])
        return sorted_rows[torch.as_tensor(picked)], torch.as_tensor(np.asarray(self.lens)[index], dtype=torch.long)


@dataclass(frozen=True)
class Ranking:
    """Top-k per query: ``indices`` (n_query, k) into the gallery, best first, and their ``scores``."""

    indices: Tensor
    scores: Tensor


def pair_scores(queries: tuple[Tensor, Tensor], gallery: tuple[Tensor, Tensor], queries_are_text: bool,
                options: ModelConfig, memory_mb: int) -> Tensor:
    """(n_query, n_gallery) SCAN scores; text queries against images, or image queries against captions."""
    (q_emb, q_lens), (g_emb, g_lens) = queries, gallery
    if queries_are_text:
        return scores_within_budget(g_emb, q_emb, q_lens, options, img_lens=g_lens, memory_mb=memory_mb).T
    return scores_within_budget(q_emb, g_emb, g_lens, options, img_lens=q_lens, memory_mb=memory_mb)


@torch.no_grad()
def exact_search(queries: Embeddings, gallery: Embeddings, queries_are_text: bool, options: ModelConfig,
                 k: int, *, memory_mb: int = 256, chunk: int = GALLERY_CHUNK) -> Ranking:
    """Scores every gallery item for every query, one gallery chunk at a time, keeping a running top-k."""
    query_rows = queries.rows(0, len(queries))
    best = Ranking(torch.empty(len(queries), 0, dtype=torch.long), torch.empty(len(queries), 0))
    for start in range(0, len(gallery), chunk):
        stop = min(start + chunk, len(gallery))
        scores = pair_scores(query_rows, gallery.rows(start, stop), queries_are_text, options, memory_mb).float()
        best = _merge(best, scores, start, k)
    return best


@torch.no_grad()
def rerank(queries: Embeddings, gallery: Embeddings, candidates: np.ndarray, queries_are_text: bool,
           options: ModelConfig, k: int, *, query_batch: int = RERANK_QUERY_BATCH) -> Ranking:
    """Each query's candidates (n_query, N) gallery indices (-1 = none) ranked by SCAN; top k per query.

    Queries go in batches: the batch's candidates are read from the gallery once (sorted, so a
    file is read forwards) and scored as (query, candidate) pairs with ``paired_scores``.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    indices, scores = [], []
    for start in range(0, len(queries), query_batch):
        chosen = candidates[start:start + query_batch]
        valid = chosen >= 0
        unique, position = np.unique(chosen[valid], return_inverse=True)
        g_emb, g_lens = gallery.take(unique)
        q_emb, q_lens = queries.rows(start, start + len(chosen))
        query_of_pair = torch.as_tensor(np.nonzero(valid)[0])
        item_of_pair = torch.as_tensor(position.reshape(-1))
        pair = _paired(q_emb[query_of_pair], q_lens[query_of_pair], g_emb[item_of_pair], g_lens[item_of_pair],
                       queries_are_text, options)
        block = torch.full(chosen.shape, float("-inf"))
        block[torch.as_tensor(valid)] = pair.float()
        top = _top_k(block, torch.as_tensor(chosen), k)
        indices.append(top.indices)
        scores.append(top.scores)
    return Ranking(torch.cat(indices), torch.cat(scores))


def two_stage_search(queries: Embeddings, query_vectors: np.ndarray, gallery: Embeddings, first_stage: FirstStage,
                     queries_are_text: bool, options: ModelConfig, k: int, shortlist_size: int, *,
                     query_batch: int = RERANK_QUERY_BATCH) -> Ranking:
    """The first stage's ``shortlist_size`` best items per query (never fewer than k), re-ranked by SCAN."""
    _, candidates = first_stage.search(np.asarray(query_vectors, dtype=np.float32), max(shortlist_size, k))
    return rerank(queries, gallery, candidates, queries_are_text, options, k, query_batch=query_batch)


def global_search(query_vectors: np.ndarray, first_stage: FirstStage, k: int) -> Ranking:
    """The global model alone: top k by the first stage's inner product."""
    scores, indices = first_stage.search(np.asarray(query_vectors, dtype=np.float32), k)
    return Ranking(torch.as_tensor(indices, dtype=torch.long), torch.as_tensor(scores, dtype=torch.float32))


def _paired(q_emb: Tensor, q_lens: Tensor, g_emb: Tensor, g_lens: Tensor, queries_are_text: bool,
            options: ModelConfig) -> Tensor:
    """(P,) scores of query/gallery pairs, in pair chunks that bound the (P, R, W) intermediates."""
    parts = []
    for start in range(0, q_emb.size(0), PAIR_CHUNK):
        part = slice(start, start + PAIR_CHUNK)
        if queries_are_text:
            parts.append(paired_scores(g_emb[part], g_lens[part], q_emb[part], q_lens[part], options))
        else:
            parts.append(paired_scores(q_emb[part], q_lens[part], g_emb[part], g_lens[part], options))
    return torch.cat(parts) if parts else torch.empty(0)


def _merge(best: Ranking, scores: Tensor, start: int, k: int) -> Ranking:
    """Running top-k after one more chunk of scores (n_query, m) for gallery items start..start+m-1.

    The chunk is cut to its own top-k candidates first (ties: all items equal to the k-th kept),
    so the exact merge only ever sorts about 2k columns.
    """
    if scores.size(1) > k:
        kth = scores.topk(k, dim=1).values[:, -1:]
        columns = torch.nonzero((scores >= kth).any(dim=0)).flatten()
    else:
        columns = torch.arange(scores.size(1))
    index = (columns + start).expand(scores.size(0), -1)
    return _top_k(torch.cat([best.scores, scores[:, columns]], dim=1), torch.cat([best.indices, index], dim=1), k)


def _top_k(scores: Tensor, indices: Tensor, k: int) -> Ranking:
    """Best ``k`` columns per row, ties broken by the smaller gallery index (deterministic)."""
    order = torch.argsort(indices, dim=1, stable=True)
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    top = torch.sort(scores, dim=1, descending=True, stable=True)
    keep = top.indices[:, :k]
    return Ranking(indices.gather(1, keep), top.values[:, :k])


def _as_tensor(values: Any) -> Tensor:
    if isinstance(values, Tensor):
        return values.float()
    return torch.from_numpy(np.asarray(values, dtype=np.float32))
