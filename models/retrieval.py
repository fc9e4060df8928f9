"""Ranking a gallery for a batch of queries: exact SCAN scores, or a pooled shortlist re-ranked.

Everything here works on embeddings already in the joint space. A gallery's embeddings may be a
tensor or any numpy array-like (an ``np.memmap`` of a million images), and are read in chunks,
so exact search over a gallery larger than memory needs only one chunk at a time.

Two-stage search: every item is summarised by the mean of its real region (or word)
embeddings, (n, d); the N gallery items with the largest inner product with the query's
summary form its shortlist, and only those are scored with stacked cross attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.config import ModelConfig
from models.scan import scores_within_budget

MODES = ("exact", "two-stage")
GALLERY_CHUNK = 8192   # gallery items scored (or pooled) per step
POOL_QUERY_CHUNK = 1024


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
        """Items at ``index`` in that order; reads are sorted so a memory map is read forwards."""
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        picked = np.empty_like(order)
        picked[order] = np.arange(len(order))
        sorted_rows = _as_tensor(self.emb[index[order]] if isinstance(self.emb, np.ndarray)
                                 else self.emb[torch.as_tensor(index[order])])
        return sorted_rows[torch.as_tensor(picked)], torch.as_tensor(np.asarray(self.lens)[index], dtype=torch.long)


@dataclass(frozen=True)
class Ranking:
    """Top-k per query: ``indices`` (n_query, k) into the gallery, best first, and their ``scores``."""

    indices: Tensor
    scores: Tensor


def pooled(items: Embeddings, chunk: int = GALLERY_CHUNK) -> Tensor:
    """(n, d) float32 mean of each item's real embeddings: the cheap first-stage summary."""
    parts = []
    for start in range(0, len(items), chunk):
        emb, lens = items.rows(start, min(start + chunk, len(items)))
        mask = torch.arange(emb.size(1)) < lens[:, None]
        parts.append((emb * mask[..., None]).sum(dim=1) / lens[:, None].clamp(min=1))
    return torch.cat(parts) if parts else torch.empty(0, items.emb.shape[2])


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
def shortlist(query_pooled: Tensor, gallery_pooled: Tensor, size: int, chunk: int = GALLERY_CHUNK) -> Tensor:
    """(n_query, size) gallery indices with the largest pooled inner product, chunked over the gallery."""
    size = min(size, gallery_pooled.size(0))
    rows = []
    for q_start in range(0, query_pooled.size(0), POOL_QUERY_CHUNK):
        query = query_pooled[q_start:q_start + POOL_QUERY_CHUNK].float()
        best = Ranking(torch.empty(query.size(0), 0, dtype=torch.long), torch.empty(query.size(0), 0))
        for start in range(0, gallery_pooled.size(0), chunk):
            best = _merge(best, query @ gallery_pooled[start:start + chunk].float().T, start, size)
        rows.append(best.indices)
    return torch.cat(rows)


@torch.no_grad()
def two_stage_search(queries: Embeddings, gallery: Embeddings, queries_are_text: bool, options: ModelConfig,
                     k: int, shortlist_size: int, *, gallery_pooled: Tensor | None = None,
                     memory_mb: int = 256) -> Ranking:
    """Pooled shortlist of ``shortlist_size`` items per query, re-ranked by exact SCAN scores.

    The shortlist is never shorter than ``k``. Pass ``gallery_pooled`` (from ``pooled(gallery)``)
    to reuse it across calls: it is the index.
    """
    if gallery_pooled is None:
        gallery_pooled = pooled(gallery)
    candidates = shortlist(pooled(queries), gallery_pooled, max(shortlist_size, k))
    indices, scores = [], []
    for row in range(len(queries)):
        query = queries.rows(row, row + 1)
        scored = pair_scores(query, gallery.take(candidates[row].numpy()), queries_are_text, options,
                             memory_mb).float()
        top = _top_k(scored, candidates[row][None], k)
        indices.append(top.indices)
        scores.append(top.scores)
    return Ranking(torch.cat(indices), torch.cat(scores))


def search(queries: Embeddings, gallery: Embeddings, queries_are_text: bool, options: ModelConfig, k: int, *,
           mode: str, shortlist_size: int, gallery_pooled: Tensor | None = None, memory_mb: int = 256) -> Ranking:
    """``exact_search`` or ``two_stage_search`` by ``mode`` ("exact" | "two-stage")."""
    if mode == "exact":
        return exact_search(queries, gallery, queries_are_text, options, k, memory_mb=memory_mb)
    if mode == "two-stage":
        return two_stage_search(queries, gallery, queries_are_text, options, k, shortlist_size,
                                gallery_pooled=gallery_pooled, memory_mb=memory_mb)
    raise ValueError(f"mode={mode!r}; expected one of {', '.join(MODES)}")


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
