"""Exact, two-stage and global ranking against brute force, in memory and from a memory-mapped gallery."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import itertools

from models.config import AGG_FUNCS, RAW_FEATURE_NORMS, ModelConfig
from models.pooling import mean_pooled
from models.retrieval import Embeddings, exact_search, global_search, rerank, two_stage_search
from models.scan import paired_scores, xattn_scores
from models.vector_index import VectorIndex


def random_items(n: int, length: int, dim: int, seed: int) -> Embeddings:
    generator = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, length + 1, (n,), generator=generator)
    emb = torch.nn.functional.normalize(torch.randn(n, length, dim, generator=generator), dim=2)
    emb = emb * (torch.arange(length) < lens[:, None])[..., None]
    return Embeddings(emb, lens.numpy())


IMAGES = random_items(24, 6, 8, seed=1)
CAPTIONS = random_items(7, 5, 8, seed=2)


def brute_force(queries_are_text: bool, options: ModelConfig) -> torch.Tensor:
    scores = xattn_scores(IMAGES.emb, CAPTIONS.emb, CAPTIONS.lens, cross_attn=options.cross_attn,
                          agg_func=options.agg_func, lambda_softmax=options.lambda_softmax,
                          lambda_lse=options.lambda_lse, raw_feature_norm=options.raw_feature_norm,
                          img_lens=IMAGES.lens)
    return scores.T if queries_are_text else scores


@pytest.mark.parametrize("options", [ModelConfig(), ModelConfig(cross_attn="i2t", lambda_softmax=4.0),
                                     ModelConfig(agg_func="LogSumExp")])
@pytest.mark.parametrize("queries_are_text", [True, False])
def test_exact_search_is_the_brute_force_ranking(options, queries_are_text):
    queries, gallery = (CAPTIONS, IMAGES) if queries_are_text else (IMAGES, CAPTIONS)
    k = 5
    ranking = exact_search(queries, gallery, queries_are_text, options, k, chunk=16)
    want = torch.sort(brute_force(queries_are_text, options), dim=1, descending=True, stable=True)
    torch.testing.assert_close(ranking.scores, want.values[:, :k], rtol=1e-5, atol=1e-6)
    assert torch.equal(ranking.indices, want.indices[:, :k])


def vectors(items: Embeddings) -> np.ndarray:
    return mean_pooled(items.emb, torch.as_tensor(items.lens)).numpy()


@pytest.mark.parametrize("cross_attn, agg_func, norm",
                         list(itertools.product(("t2i", "i2t"), AGG_FUNCS, RAW_FEATURE_NORMS)))
def test_paired_scores_are_the_diagonal_of_the_full_scores(cross_attn, agg_func, norm):
    options = ModelConfig(cross_attn=cross_attn, agg_func=agg_func, raw_feature_norm=norm)
    images, captions = Embeddings(IMAGES.emb[:7], IMAGES.lens[:7]), CAPTIONS
    full = xattn_scores(images.emb, captions.emb, captions.lens, cross_attn=cross_attn, agg_func=agg_func,
                        raw_feature_norm=norm, img_lens=images.lens)
    paired = paired_scores(images.emb, torch.as_tensor(images.lens), captions.emb, torch.as_tensor(captions.lens),
                           options)
    torch.testing.assert_close(paired, full.diagonal(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("queries_are_text", [True, False])
def test_two_stage_with_the_whole_gallery_equals_exact(queries_are_text):
    first_images = Embeddings(IMAGES.emb[:6], IMAGES.lens[:6])
    queries, gallery = (CAPTIONS, IMAGES) if queries_are_text else (first_images, CAPTIONS)
    exact = exact_search(queries, gallery, queries_are_text, ModelConfig(), k=len(gallery))
    staged = two_stage_search(queries, vectors(queries), gallery, VectorIndex.build(vectors(gallery), "flat"),
                              queries_are_text, ModelConfig(), k=len(gallery), shortlist_size=len(gallery),
                              query_batch=3)
    assert torch.equal(staged.indices, exact.indices)
    torch.testing.assert_close(staged.scores, exact.scores, rtol=1e-5, atol=1e-6)


def test_two_stage_reranks_only_the_first_stage_shortlist_in_query_batches():
    size = 6
    first_stage = VectorIndex.build(vectors(IMAGES), "flat")
    brute = torch.topk(torch.as_tensor(vectors(CAPTIONS) @ vectors(IMAGES).T), size, dim=1).indices
    staged = two_stage_search(CAPTIONS, vectors(CAPTIONS), IMAGES, first_stage, True, ModelConfig(), k=3,
                              shortlist_size=size, query_batch=2)
    for row, chosen in zip(brute.tolist(), staged.indices.tolist()):
        assert set(chosen) <= set(row)
    exact_on_shortlist = brute_force(True, ModelConfig()).gather(1, brute).max(dim=1).values
    torch.testing.assert_close(staged.scores[:, 0], exact_on_shortlist, rtol=1e-5, atol=1e-6)


def test_rerank_skips_missing_candidates():
    candidates = np.array([[3, -1, 5], [-1, -1, 2]])
    ranking = rerank(Embeddings(CAPTIONS.emb[:2], CAPTIONS.lens[:2]), IMAGES, candidates, True, ModelConfig(), k=3)
    assert ranking.indices[1, 0] == 2 and torch.isinf(ranking.scores[1, 1:]).all()
    assert set(ranking.indices[0, :2].tolist()) == {3, 5}


def test_global_search_is_the_inner_product_ranking():
    ranking = global_search(vectors(CAPTIONS), VectorIndex.build(vectors(IMAGES), "flat"), k=4)
    want = torch.topk(torch.as_tensor(vectors(CAPTIONS) @ vectors(IMAGES).T), 4, dim=1)
    assert torch.equal(ranking.indices, want.indices)
    torch.testing.assert_close(ranking.scores, want.values)


def test_memory_mapped_float16_gallery_gives_the_in_memory_ranking(tmp_path):
    path = tmp_path / "gallery.f16"
    array = np.memmap(path, dtype=np.float16, mode="w+", shape=tuple(IMAGES.emb.shape))
    array[:] = IMAGES.emb.numpy()
    array.flush()
    mapped = Embeddings(np.memmap(path, dtype=np.float16, mode="r", shape=tuple(IMAGES.emb.shape)), IMAGES.lens)
    rounded = Embeddings(IMAGES.emb.half().float(), IMAGES.lens)
    first_stage = VectorIndex.build(vectors(rounded), "flat")
    assert torch.equal(exact_search(CAPTIONS, mapped, True, ModelConfig(), 4).indices,
                       exact_search(CAPTIONS, rounded, True, ModelConfig(), 4).indices)
    got = two_stage_search(CAPTIONS, vectors(CAPTIONS), mapped, first_stage, True, ModelConfig(), 4, 10)
    want = two_stage_search(CAPTIONS, vectors(CAPTIONS), rounded, first_stage, True, ModelConfig(), 4, 10)
    assert torch.equal(got.indices, want.indices)
