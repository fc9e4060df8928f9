"""Exact and two-stage ranking against brute force, in memory and from a memory-mapped gallery."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.config import ModelConfig
from models.retrieval import Embeddings, exact_search, pooled, search, shortlist, two_stage_search
from models.scan import xattn_scores


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


@pytest.mark.parametrize("queries_are_text", [True, False])
def test_two_stage_with_the_whole_gallery_equals_exact(queries_are_text):
    first_images = Embeddings(IMAGES.emb[:6], IMAGES.lens[:6])
    queries, gallery = (CAPTIONS, IMAGES) if queries_are_text else (first_images, CAPTIONS)
    exact = exact_search(queries, gallery, queries_are_text, ModelConfig(), k=len(gallery))
    staged = two_stage_search(queries, gallery, queries_are_text, ModelConfig(), k=len(gallery),
                              shortlist_size=len(gallery))
    assert torch.equal(staged.indices, exact.indices)
    torch.testing.assert_close(staged.scores, exact.scores, rtol=1e-5, atol=1e-6)


def test_two_stage_reranks_only_the_pooled_shortlist():
    size = 6
    candidates = shortlist(pooled(CAPTIONS), pooled(IMAGES), size, chunk=7)
    brute = torch.topk(pooled(CAPTIONS) @ pooled(IMAGES).T, size, dim=1).indices
    assert torch.equal(candidates.sort(dim=1).values, brute.sort(dim=1).values)
    staged = two_stage_search(CAPTIONS, IMAGES, True, ModelConfig(), k=3, shortlist_size=size)
    for row, chosen in zip(candidates.tolist(), staged.indices.tolist()):
        assert set(chosen) <= set(row)
    exact_on_shortlist = brute_force(True, ModelConfig()).gather(1, candidates).max(dim=1).values
    torch.testing.assert_close(staged.scores[:, 0], exact_on_shortlist, rtol=1e-5, atol=1e-6)


def test_pooled_means_only_real_positions():
    items = Embeddings(torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]]), np.array([2]))
    torch.testing.assert_close(pooled(items), torch.tensor([[2.0, 1.0]]))


def test_memory_mapped_float16_gallery_gives_the_in_memory_ranking(tmp_path):
    path = tmp_path / "gallery.f16"
    array = np.memmap(path, dtype=np.float16, mode="w+", shape=tuple(IMAGES.emb.shape))
    array[:] = IMAGES.emb.numpy()
    array.flush()
    mapped = Embeddings(np.memmap(path, dtype=np.float16, mode="r", shape=tuple(IMAGES.emb.shape)), IMAGES.lens)
    rounded = Embeddings(IMAGES.emb.half().float(), IMAGES.lens)
    for mode in ("exact", "two-stage"):
        got = search(CAPTIONS, mapped, True, ModelConfig(), 4, mode=mode, shortlist_size=10)
        want = search(CAPTIONS, rounded, True, ModelConfig(), 4, mode=mode, shortlist_size=10)
        assert torch.equal(got.indices, want.indices)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        search(CAPTIONS, IMAGES, True, ModelConfig(), 3, mode="fast", shortlist_size=5)
