"""xattn_scores against the reference formulation: values, gradients, padding, chunking, bf16."""
import itertools

import pytest
import torch
from torch.nn.functional import normalize

from models import scan
from models.config import AGG_FUNCS, RAW_FEATURE_NORMS, ModelConfig
from models.reference import reference_xattn_scores
from models.scan import scores_within_budget, xattn_scores

ALL_OPTIONS = list(itertools.product(("t2i", "i2t"), AGG_FUNCS, RAW_FEATURE_NORMS))


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def make_inputs(seed, n_img=4, n_regions=6, n_cap=7, max_words=5, dim=12, dtype=torch.float32):
    """L2-normalised embeddings with random caption and image lengths (all lengths present)."""
    gen = torch.Generator().manual_seed(seed)
    img = normalize(torch.randn(n_img, n_regions, dim, generator=gen, dtype=dtype), dim=-1)
    cap = normalize(torch.randn(n_cap, max_words, dim, generator=gen, dtype=dtype), dim=-1)
    cap_lens = torch.randint(1, max_words + 1, (n_cap,), generator=gen)
    cap_lens[:2] = torch.tensor([1, max_words])
    img_lens = torch.randint(1, n_regions + 1, (n_img,), generator=gen)
    img_lens[:2] = torch.tensor([1, n_regions])
    return img, cap, cap_lens, img_lens


def with_garbage_padding(emb, lens, value):
    """A copy with every position beyond its length overwritten by ``value``."""
    out = emb.clone()
    for row, length in enumerate(lens.tolist()):
        out[row, length:] = value
    return out


@pytest.mark.parametrize("cross_attn,agg_func,raw_feature_norm", ALL_OPTIONS)
def test_equals_reference_with_padding_and_image_lengths(cross_attn, agg_func, raw_feature_norm):
    img, cap, cap_lens, img_lens = make_inputs(seed=len(agg_func) + len(raw_feature_norm))
    options = dict(cross_attn=cross_attn, agg_func=agg_func, raw_feature_norm=raw_feature_norm,
                   lambda_softmax=4.0 if cross_attn == "i2t" else 9.0)
    expected = reference_xattn_scores(img, cap, cap_lens, img_lens=img_lens, **options)
    got = xattn_scores(with_garbage_padding(img, img_lens, 55.0), with_garbage_padding(cap, cap_lens, -3e3),
                       cap_lens, img_lens=img_lens, **options)
    assert got.shape == (img.size(0), cap.size(0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    full = xattn_scores(img, cap, cap_lens, **options)
    torch.testing.assert_close(full, reference_xattn_scores(img, cap, cap_lens, **options), atol=1e-5, rtol=0)


def test_padded_regions_do_not_change_scores_even_when_nan():
    img, cap, cap_lens, img_lens = make_inputs(seed=3)
    for cross_attn in ("t2i", "i2t"):
        clean = xattn_scores(img, cap, cap_lens, img_lens=img_lens, cross_attn=cross_attn)
        dirty = xattn_scores(with_garbage_padding(img, img_lens, float("nan")), cap, cap_lens,
                             img_lens=img_lens, cross_attn=cross_attn)
        torch.testing.assert_close(dirty, clean, atol=0, rtol=0)


@pytest.mark.parametrize("cross_attn,agg_func,raw_feature_norm",
                         [("t2i", "Mean", "clipped_l2norm"), ("i2t", "Mean", "clipped_l2norm"),
                          ("t2i", "LogSumExp", "softmax"), ("i2t", "Max", "l1norm"),
                          ("i2t", "Sum", "clipped_l1norm"), ("t2i", "Sum", "no_norm")])
def test_gradients_equal_reference_in_float64(cross_attn, agg_func, raw_feature_norm):
    img, cap, cap_lens, img_lens = make_inputs(seed=11, dtype=torch.float64)
    weights = torch.randn(img.size(0), cap.size(0), generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    options = dict(cross_attn=cross_attn, agg_func=agg_func, raw_feature_norm=raw_feature_norm, img_lens=img_lens)
    grads = []
    for scorer in (xattn_scores, reference_xattn_scores):
        img_leaf, cap_leaf = img.clone().requires_grad_(), cap.clone().requires_grad_()
        (scorer(img_leaf, cap_leaf, cap_lens, **options) * weights).sum().backward()
        grads.append((img_leaf.grad, cap_leaf.grad))
    (img_fast, cap_fast), (img_ref, cap_ref) = grads
    torch.testing.assert_close(img_fast, img_ref, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(cap_fast, cap_ref, atol=1e-9, rtol=1e-7)


def test_gradcheck_of_fast_path():
    img, cap, cap_lens, img_lens = make_inputs(seed=5, n_img=2, n_regions=3, n_cap=3, max_words=3, dim=4,
                                               dtype=torch.float64)
    for cross_attn in ("t2i", "i2t"):
        def score(i, c, cross_attn=cross_attn):
            return xattn_scores(i, c, cap_lens, img_lens=img_lens, cross_attn=cross_attn)
        assert torch.autograd.gradcheck(score, (img.requires_grad_(), cap.requires_grad_()))


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
def test_chunked_blocks_give_the_same_scores(cross_attn, monkeypatch):
    img, cap, cap_lens, img_lens = make_inputs(seed=7, n_img=5, n_cap=12)
    options = ModelConfig(cross_attn=cross_attn, agg_func="LogSumExp")
    whole = scores_within_budget(img, cap, cap_lens, options, img_lens=img_lens, memory_mb=1024)
    monkeypatch.setattr(scan, "WORDS_PER_BLOCK", 3)  # splits every length bucket
    pieces = scores_within_budget(img, cap, cap_lens, options, img_lens=img_lens, memory_mb=0)
    torch.testing.assert_close(pieces, whole, atol=1e-6, rtol=0)


def test_bfloat16_inputs_score_in_bfloat16_close_to_float32():
    img, cap, cap_lens, img_lens = make_inputs(seed=9, dim=64)
    exact = xattn_scores(img, cap, cap_lens, img_lens=img_lens)
    low = xattn_scores(img.bfloat16(), cap.bfloat16(), cap_lens, img_lens=img_lens)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, atol=3e-2, rtol=0)


def test_bad_lengths_and_options_are_rejected():
    img, cap, cap_lens, _ = make_inputs(seed=1)
    with pytest.raises(ValueError, match="cap_lens"):
        xattn_scores(img, cap, cap_lens + cap.size(1))
    with pytest.raises(ValueError, match="img_lens"):
        xattn_scores(img, cap, cap_lens, img_lens=[0] * img.size(0))
    with pytest.raises(ValueError, match="agg_func"):
        xattn_scores(img, cap, cap_lens, agg_func="Median")
