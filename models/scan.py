"""Stacked cross attention scores, exact to the reference and without per-pair contexts.

Every quantity of the reference formulation is a function of the word-region similarity
S = <v_r, e_w>, so nothing of size (pairs, query, d) is ever built:

* attention numerator  <e_w, sum_r a_r v_r> = sum_r a_r S_rw;
* context norm         ||sum_r a_r v_r||^2 = a^T G a, with G = V V^T per image (R, R)
  (t2i), or the per-caption word Gram matrix (L, L) for i2t.

Captions are grouped into buckets of equal length, so one matmul per bucket covers only
real words and all normalisations are dense reductions. Images and captions are chunked so
each block stays within a memory budget. The function is differentiable (training uses it)
and computes in the input dtype (bf16 inputs give a bf16 scoring mode).

Large float32 CPU computations without gradients (evaluation, search) hand each block's
similarities to a fused C++ kernel (``models.fused``) that does everything after the matmul in
one pass; the PyTorch code below stays the definition, the training path and the fallback.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models import fused
from models.config import ModelConfig

EPS = 1e-8             # the reference's eps for l1/l2 norms and for cosine similarity
DEFAULT_MEMORY_MB = 256
DEFAULTS = ModelConfig()  # the attention options' defaults, defined once in ModelConfig
LIVE_BLOCK_COPIES = 8  # block-sized tensors alive at once (autograd keeps most of them)
WORDS_PER_BLOCK = 2048  # caption words per block at most
CACHE_BLOCK_ELEMENTS = 2**20  # block size (regions x words) that keeps elementwise passes in cache
FUSED_MIN_PRODUCTS = 2**27  # region-word products from which building the fused kernel once pays off


@dataclass(frozen=True)
class _Images:
    """Images prepared once per chunk: padding zeroed, plus what both directions reuse."""

    emb: Tensor           # (I, R, d), padded regions zeroed
    mask: Tensor | None   # (I, R) True on real regions; None when all are real
    gram: Tensor | None   # (I, R, R) for t2i; columns zero-padded (fused.padded_gram) on the fused path
    sq_norms: Tensor      # (I, R) squared region norms, for i2t


@dataclass(frozen=True)
class _Captions:
    """One block of captions of equal length, prepared once for every image chunk."""

    emb: Tensor           # (C, L, d)
    sq_norms: Tensor      # (C, L) squared word norms, for t2i
    gram: Tensor | None   # (C, L, L) word Gram matrices, for i2t


def xattn_scores(img_emb: Tensor, cap_emb: Tensor, cap_lens: Tensor | Sequence[int], *,
                 cross_attn: str = DEFAULTS.cross_attn, agg_func: str = DEFAULTS.agg_func,
                 lambda_softmax: float = DEFAULTS.lambda_softmax, lambda_lse: float = DEFAULTS.lambda_lse,
                 raw_feature_norm: str = DEFAULTS.raw_feature_norm,
                 img_lens: Tensor | Sequence[int] | None = None) -> Tensor:
    """img_emb (n_img, R, d), cap_emb (n_cap, W, d) -> SCAN scores (n_img, n_cap)."""
    options = ModelConfig(cross_attn=cross_attn, agg_func=agg_func, lambda_softmax=lambda_softmax,
                          lambda_lse=lambda_lse, raw_feature_norm=raw_feature_norm)
    return scores_within_budget(img_emb, cap_emb, cap_lens, options, img_lens=img_lens)


def scores_within_budget(img_emb: Tensor, cap_emb: Tensor, cap_lens: Tensor | Sequence[int],
                         options: ModelConfig, *, img_lens: Tensor | Sequence[int] | None = None,
                         memory_mb: int = DEFAULT_MEMORY_MB, fused_kernel: bool | None = None) -> Tensor:
    """As ``xattn_scores`` with the attention options of ``options`` and a memory budget per block.

    ``memory_mb`` bounds the block-sized intermediates of one (image chunk, caption block);
    evaluation passes ``EvalConfig.score_memory_mb``. ``fused_kernel``: None uses the fused
    kernel where it applies (float32 CPU inference) and the computation is large enough to pay
    for building it once; True uses it wherever it applies; False never.
    """
    lens = _checked_lengths(cap_lens, cap_emb.size(1), "cap_lens", cap_emb.size(0))
    region_mask = _region_mask(img_emb, img_lens)
    caption_blocks = list(_caption_blocks(lens))
    order = torch.cat([index for _, index in caption_blocks])
    # One gather of the real words only, straight into contiguous blocks: no work on padding,
    # no per-block copies, and backward writes each word's gradient once with one scatter.
    width, dim = cap_emb.shape[1:]
    rows = torch.cat([(index[:, None] * width + torch.arange(length)).flatten()
                      for length, index in caption_blocks])
    words = cap_emb.reshape(-1, dim).index_select(0, rows.to(cap_emb.device))
    grouped = words.split([index.numel() * length for length, index in caption_blocks])
    use_fused = _fused_applies(fused_kernel, img_emb, cap_emb, rows.numel())
    blocks = [_prepare_captions(part.view(index.numel(), length, dim), options.cross_attn)
              for (length, index), part in zip(caption_blocks, grouped)]
    score_block = _fused_block if use_fused else _score_block
    image_rows = []
    for start, stop in _image_chunks(img_emb, blocks, memory_mb):
        images = _prepare_images(img_emb[start:stop], None if region_mask is None
                                 else region_mask[start:stop], options.cross_attn, use_fused)
        image_rows.append(torch.cat([score_block(images, captions, options) for captions in blocks], dim=1))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return torch.cat(image_rows, dim=0)[:, inverse.to(img_emb.device)]


def paired_scores(img_emb: Tensor, img_lens: Tensor | Sequence[int], cap_emb: Tensor,
                  cap_lens: Tensor | Sequence[int], options: ModelConfig) -> Tensor:
    """(P,) SCAN score of each pair p = (image p (R, d), caption p (W, d)), padding masked.

    The formulation of ``xattn_scores`` restricted to matching rows: re-ranking gives every query
    its own shortlist, where the full images x captions product would waste all but one pair in Q.
    Padded words and regions are excluded from every normalisation, softmax and aggregation.
    """
    n_pairs, n_regions, _ = img_emb.shape
    region_mask = torch.arange(n_regions, device=img_emb.device) < _checked_lengths(
        img_lens, n_regions, "img_lens", n_pairs).to(img_emb.device)[:, None]
    word_mask = torch.arange(cap_emb.size(1), device=cap_emb.device) < _checked_lengths(
        cap_lens, cap_emb.size(1), "cap_lens", n_pairs).to(cap_emb.device)[:, None]
    images = torch.where(region_mask[..., None], img_emb, 0.0)
    captions = torch.where(word_mask[..., None], cap_emb, 0.0)
    if options.cross_attn == "t2i":   # words (attending over regions) are the query axis
        queries, query_mask, keys, key_mask = captions, word_mask, images, region_mask
    else:                             # regions (attending over words) are the query axis
        queries, query_mask, keys, key_mask = images, region_mask, captions, word_mask
    sim = torch.bmm(keys, queries.transpose(1, 2))                           # (P, keys, queries)
    logits = _attention_logits(sim, options, dim=2, mask=query_mask[:, None, :])
    attn = torch.softmax(logits.masked_fill(~key_mask[..., None], float("-inf")), dim=1)
    numerator = torch.linalg.vecdot(attn, sim, dim=1)                        # (P, queries)
    gram_attn = torch.bmm(torch.bmm(keys, keys.transpose(1, 2)), attn)
    context_sq = torch.linalg.vecdot(attn, gram_attn, dim=1)                 # ||sum_k a_k key_k||^2
    cosine = _cosine(numerator, queries.pow(2).sum(dim=2) * context_sq)
    return _aggregate(cosine, options, dim=1, mask=query_mask)


def _checked_lengths(lengths: Tensor | Sequence[int], limit: int, name: str, count: int) -> Tensor:
    lens = torch.as_tensor(lengths, dtype=torch.long).cpu().flatten()
    if lens.numel() != count:
        raise ValueError(f"{name} has {lens.numel()} entries for {count} items")
    if count and (lens.min() < 1 or lens.max() > limit):
        raise ValueError(f"{name} must lie in [1, {limit}], got [{int(lens.min())}, {int(lens.max())}]")
    return lens


def _region_mask(img_emb: Tensor, img_lens: Tensor | Sequence[int] | None) -> Tensor | None:
    """(n_img, R) True on real regions, or None when every region is real."""
    if img_lens is None:
        return None
    n_img, n_regions = img_emb.shape[:2]
    lens = _checked_lengths(img_lens, n_regions, "img_lens", n_img).to(img_emb.device)
    if bool((lens == n_regions).all()):
        return None
    return torch.arange(n_regions, device=img_emb.device) < lens[:, None]


def _caption_blocks(lens: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(length, caption indices): captions of one length, at most WORDS_PER_BLOCK words a block."""
    for length in lens.unique().tolist():
        index = torch.nonzero(lens == length).flatten()
        per_block = max(1, WORDS_PER_BLOCK // length)
        yield from ((length, part) for part in index.split(per_block))


def _image_chunks(img_emb: Tensor, blocks: list[_Captions], memory_mb: int) -> Iterator[tuple[int, int]]:
    """Image ranges sized so the largest caption block fits the budget and, for speed, the cache."""
    n_img, n_regions = img_emb.shape[:2]
    words = max((block.sq_norms.numel() for block in blocks), default=1)
    per_image = n_regions * words
    in_budget = memory_mb * 2**20 // (per_image * img_emb.element_size() * LIVE_BLOCK_COPIES)
    size = max(1, min(n_img, in_budget, CACHE_BLOCK_ELEMENTS // per_image))
    for start in range(0, n_img, size):
        yield start, min(start + size, n_img)


def _fused_applies(requested: bool | None, img_emb: Tensor, cap_emb: Tensor, n_words: int) -> bool:
    """Float32 CPU inference with at most fused.MAX_REGIONS regions (and, unless requested, large)."""
    if requested is False:
        return False
    needs_grad = torch.is_grad_enabled() and (img_emb.requires_grad or cap_emb.requires_grad)
    applies = (not needs_grad and img_emb.device.type == cap_emb.device.type == "cpu"
               and img_emb.dtype == cap_emb.dtype == torch.float32 and fused.handles(img_emb.shape[1]))
    large = img_emb.shape[0] * img_emb.shape[1] * n_words >= FUSED_MIN_PRODUCTS
    return applies and (requested or large) and fused.available()


def _prepare_images(img_emb: Tensor, mask: Tensor | None, cross_attn: str, use_fused: bool) -> _Images:
    emb = img_emb if mask is None else torch.where(mask[..., None], img_emb, 0.0)
    gram = torch.bmm(emb, emb.transpose(1, 2)) if cross_attn == "t2i" else None
    if gram is not None and use_fused:
        gram = fused.padded_gram(gram)
    return _Images(emb, mask, gram, emb.pow(2).sum(dim=2))


def _prepare_captions(emb: Tensor, cross_attn: str) -> _Captions:
    gram = torch.bmm(emb, emb.transpose(1, 2)) if cross_attn == "i2t" else None
    return _Captions(emb, emb.pow(2).sum(dim=2), gram)


def _fused_block(images: _Images, captions: _Captions, options: ModelConfig) -> Tensor:
    """As ``_score_block`` through the fused kernel: one matmul, then one pass per pair."""
    (n_img, n_regions, dim), (n_cap, length, _) = images.emb.shape, captions.emb.shape
    sim = (captions.emb.reshape(-1, dim) @ images.emb.reshape(-1, dim).T).view(n_cap, length, n_img, n_regions)
    if options.cross_attn == "t2i":
        return fused.text_to_image(sim, images.gram, captions.sq_norms, images.mask, options).T
    return fused.image_to_text(sim, captions.gram, images.sq_norms, images.mask, options).T


def _score_block(images: _Images, captions: _Captions, options: ModelConfig) -> Tensor:
    """Images of one chunk against captions (C, L, d) of equal length L -> (I, C)."""
    if options.cross_attn == "t2i":
        return _text_to_image(images, captions, options)
    return _image_to_text(images, captions, options)


def _text_to_image(images: _Images, captions: _Captions, options: ModelConfig) -> Tensor:
    """Words attend to regions; the mean (etc.) over words of cos(word, attended image)."""
    emb, mask = images.emb, images.mask
    (n_img, n_regions, dim), (n_cap, length, _) = emb.shape, captions.emb.shape
    sim = (emb.reshape(-1, dim) @ captions.emb.reshape(-1, dim).T).view(n_img, n_regions, n_cap, length)
    logits = _attention_logits(sim, options, dim=3)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, :, None, None], float("-inf"))
    attn = torch.softmax(logits, dim=1)                                    # over regions
    numerator = torch.linalg.vecdot(attn, sim, dim=1)                      # (I, C, L)
    gram_attn = torch.bmm(images.gram, attn.view(n_img, n_regions, -1)).view_as(attn)
    context_sq = torch.linalg.vecdot(attn, gram_attn, dim=1)               # ||sum_r a_r v_r||^2
    cosine = _cosine(numerator, captions.sq_norms * context_sq)
    return _aggregate(cosine, options, dim=2, mask=None)


def _image_to_text(images: _Images, captions: _Captions, options: ModelConfig) -> Tensor:
    """Regions attend to words; the mean (etc.) over real regions of cos(region, attended caption)."""
    emb, mask = images.emb, images.mask
    (n_img, n_regions, dim), (n_cap, length, _) = emb.shape, captions.emb.shape
    sim = (captions.emb.reshape(-1, dim) @ emb.reshape(-1, dim).T).view(n_cap, length, n_img, n_regions)
    region_mask = None if mask is None else mask[None, None]
    logits = _attention_logits(sim, options, dim=3, mask=region_mask)
    attn = torch.softmax(logits, dim=1)                                    # over words
    numerator = torch.linalg.vecdot(attn, sim, dim=1)                      # (C, I, R)
    gram_attn = torch.bmm(captions.gram, attn.view(n_cap, length, -1)).view_as(attn)
    context_sq = torch.linalg.vecdot(attn, gram_attn, dim=1)               # ||sum_w a_w e_w||^2
    cosine = _cosine(numerator, images.sq_norms * context_sq)
    return _aggregate(cosine, options, dim=2, mask=mask).T


def _attention_logits(sim: Tensor, options: ModelConfig, dim: int, mask: Tensor | None = None) -> Tensor:
    """lambda_softmax times the reference's first normalisation of ``sim`` over the query axis ``dim``.

    The scale is folded into the normalising divisor so each kind costs one elementwise pass
    (plus the clipping). ``mask`` (broadcastable, True = real) matters only for softmax:
    masked entries are zero in ``sim`` already, which leaves l1/l2 norms and clipping exact.
    """
    kind, scale = options.raw_feature_norm, options.lambda_softmax
    if kind.startswith("clipped"):
        sim = torch.nn.functional.leaky_relu(sim, 0.1)
    if kind == "softmax":
        if mask is not None:
            sim = sim.masked_fill(~mask, float("-inf"))
        return torch.softmax(sim, dim=dim) * scale
    if kind.endswith("l2norm") or kind.endswith("l1norm"):
        order = 2 if kind.endswith("l2norm") else 1
        return sim * (scale / (torch.linalg.vector_norm(sim, ord=order, dim=dim, keepdim=True) + EPS))
    return sim * scale


def _cosine(numerator: Tensor, norm_product_sq: Tensor) -> Tensor:
    """numerator / max(||x1|| ||x2||, eps) from the squared norm product, as the reference.

    Clamping the square at eps^2 is the same clamp and keeps sqrt's gradient finite.
    """
    return numerator / norm_product_sq.clamp(min=EPS * EPS).sqrt()


def _aggregate(cosine: Tensor, options: ModelConfig, dim: int, mask: Tensor | None) -> Tensor:
    """Reduce cosines over the query axis ``dim`` (masked entries excluded)."""
    agg = options.agg_func
    if mask is not None:
        fill = float("-inf") if agg in ("Max", "LogSumExp") else 0.0
        cosine = cosine.masked_fill(~mask, fill)
    if agg == "LogSumExp":
        return torch.logsumexp(cosine * options.lambda_lse, dim=dim) / options.lambda_lse
    if agg == "Max":
        return cosine.amax(dim=dim)
    total = cosine.sum(dim=dim)
    if agg == "Sum":
        return total
    count = cosine.size(dim) if mask is None else mask.sum(dim=-1).to(cosine.dtype)
    return total / count
