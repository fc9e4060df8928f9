"""The reference SCAN scoring (kuanghuei/SCAN model.py), re-implemented as the baseline.

It keeps the reference's formulation on purpose, slow as it is: one loop iteration per
caption, the caption repeated for every image, the attention-weighted context materialised
with ``bmm`` as an (n_img, n_query, d) tensor, and cosine similarity with eps=1e-8 on the
product of norms. Extension: ``img_lens`` is honoured by slicing each image to its real
regions (images of equal length are sliced together). Tests and benchmarks compare
``models.scan.xattn_scores`` against this.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.config import ModelConfig

EPS = 1e-8
DEFAULTS = ModelConfig()  # the reference's train.py defaults, as ModelConfig records them


def _l1norm(x: Tensor, dim: int) -> Tensor:
    return x / (x.abs().sum(dim=dim, keepdim=True) + EPS)


def _l2norm(x: Tensor, dim: int) -> Tensor:
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + EPS)


def _raw_norm(attn: Tensor, raw_feature_norm: str) -> Tensor:
    """Normalise the raw attention (batch, sourceL, queryL) over the query axis (dim 2)."""
    if raw_feature_norm.startswith("clipped"):
        attn = nn.functional.leaky_relu(attn, 0.1)
    if raw_feature_norm == "softmax":
        return torch.softmax(attn, dim=2)
    if raw_feature_norm.endswith("l2norm"):
        return _l2norm(attn, 2)
    if raw_feature_norm.endswith("l1norm"):
        return _l1norm(attn, 2)
    if raw_feature_norm in ("clipped", "no_norm"):
        return attn
    raise ValueError(f"unknown raw_feature_norm {raw_feature_norm!r}")


def func_attention(query: Tensor, context: Tensor, raw_feature_norm: str, smooth: float) -> Tensor:
    """query (n, queryL, d), context (n, sourceL, d) -> weighted context (n, queryL, d)."""
    attn = torch.bmm(context, query.transpose(1, 2))           # (n, sourceL, queryL)
    attn = _raw_norm(attn, raw_feature_norm)
    attn = torch.softmax(attn.transpose(1, 2) * smooth, dim=2)  # (n, queryL, sourceL)
    return torch.bmm(attn, context)                             # (n, queryL, d)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int) -> Tensor:
    """The reference's cosine: <x1, x2> / max(||x1|| ||x2||, eps)."""
    w12 = (x1 * x2).sum(dim)
    return w12 / (x1.norm(2, dim) * x2.norm(2, dim)).clamp(min=EPS)


def _aggregate(row_sim: Tensor, agg_func: str, lambda_lse: float) -> Tensor:
    """(n_img, n_query) -> (n_img,)."""
    if agg_func == "LogSumExp":
        return torch.log(torch.exp(row_sim * lambda_lse).sum(dim=1)) / lambda_lse
    if agg_func == "Max":
        return row_sim.max(dim=1).values
    if agg_func == "Sum":
        return row_sim.sum(dim=1)
    if agg_func == "Mean":
        return row_sim.mean(dim=1)
    raise ValueError(f"unknown agg_func {agg_func!r}")


def _score_images(images: Tensor, caption: Tensor, cross_attn: str, agg_func: str,
                  lambda_softmax: float, lambda_lse: float, raw_feature_norm: str) -> Tensor:
    """Scores of one caption (n_word, d) against images (n, R, d) of equal length -> (n,)."""
    cap_expand = caption.unsqueeze(0).repeat(images.size(0), 1, 1)
    if cross_attn == "t2i":
        context = func_attention(cap_expand, images, raw_feature_norm, lambda_softmax)
        row_sim = cosine_similarity(cap_expand, context, dim=2)
    elif cross_attn == "i2t":
        context = func_attention(images, cap_expand, raw_feature_norm, lambda_softmax)
        row_sim = cosine_similarity(images, context, dim=2)
    else:
        raise ValueError(f"unknown cross_attn {cross_attn!r}")
    return _aggregate(row_sim, agg_func, lambda_lse)


def reference_xattn_scores(img_emb: Tensor, cap_emb: Tensor, cap_lens: Tensor | Sequence[int], *,
                           cross_attn: str = DEFAULTS.cross_attn, agg_func: str = DEFAULTS.agg_func,
                           lambda_softmax: float = DEFAULTS.lambda_softmax, lambda_lse: float = DEFAULTS.lambda_lse,
                           raw_feature_norm: str = DEFAULTS.raw_feature_norm,
                           img_lens: Tensor | Sequence[int] | None = None) -> Tensor:
    """img_emb (n_img, R, d), cap_emb (n_cap, W, d) -> scores (n_img, n_cap)."""
    n_img, n_regions = img_emb.shape[:2]
    lens = torch.full((n_img,), n_regions) if img_lens is None else torch.as_tensor(img_lens).cpu()
    groups = [(int(length), torch.nonzero(lens == length).flatten()) for length in lens.unique()]
    columns = []
    for i, n_word in enumerate(torch.as_tensor(cap_lens).tolist()):
        caption = cap_emb[i, :n_word]
        column = img_emb.new_empty(n_img)
        for length, index in groups:
            scores = _score_images(img_emb[index.to(img_emb.device), :length], caption, cross_attn,
                                   agg_func, lambda_softmax, lambda_lse, raw_feature_norm)
            column = column.index_put((index.to(img_emb.device),), scores)
        columns.append(column)
    return torch.stack(columns, dim=1)
