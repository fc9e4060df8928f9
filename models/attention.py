"""Attention weights of one (image, caption) pair, as stacked cross attention computes them.

t2i: each word w attends to regions with weights a_wr = softmax_r(lambda * norm(S)_rw), where S
is the region-word cosine matrix and norm the model's raw_feature_norm over words; i2t: each
region attends to words, softmax over words of the normalised S over regions. The logits come
from ``models.scan`` itself, so the pictures show exactly what the scores use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.config import ModelConfig
from models.encoders import SCANModel
from models.scan import _attention_logits
from pipeline.captions import Vocabulary, tokenize
from pipeline.store import RegionRecord

EPS = 1e-8


@dataclass(frozen=True)
class PairAttention:
    """Attention of one pair; W words (with <start>/<end>), R regions.

    word_to_region (W, R): t2i weights, each row sums to 1. region_to_word (R, W): i2t weights,
    each row sums to 1. word_relevance (W,): cosine of each word with the image context it
    attends to; region_relevance (R,): cosine of each region with its caption context.
    score: the model's similarity of the pair (with its own cross_attn direction).
    """

    image_id: str
    caption: str
    words: list[str]
    boxes: np.ndarray
    image_hw: tuple[int, int]
    cross_attn: str
    word_to_region: np.ndarray
    region_to_word: np.ndarray
    word_relevance: np.ndarray
    region_relevance: np.ndarray
    score: float


def attention_weights(img_emb: Tensor, cap_emb: Tensor, options: ModelConfig) -> tuple[Tensor, Tensor]:
    """img_emb (R, d), cap_emb (W, d) -> (word_to_region (W, R), region_to_word (R, W))."""
    sim = img_emb @ cap_emb.T                                             # (R, W)
    t2i = torch.softmax(_attention_logits(sim[None, :, None, :], options, dim=3), dim=1)
    i2t = torch.softmax(_attention_logits(sim.T[None, :, None, :], options, dim=3), dim=1)
    return t2i[0, :, 0, :].T, i2t[0, :, 0, :].T


def relevance(queries: Tensor, sources: Tensor, weights: Tensor) -> Tensor:
    """Cosine of each query (n, d) with its attended context weights (n, m) @ sources (m, d) -> (n,)."""
    context = weights @ sources
    return (queries * context).sum(dim=1) / (queries.norm(dim=1) * context.norm(dim=1)).clamp(min=EPS)


@torch.no_grad()
def explain_pair(model: SCANModel, vocab: Vocabulary, record: RegionRecord, caption: str) -> PairAttention:
    """Encodes the image's regions and the caption and returns every attention weight of the pair."""
    model.eval()
    token_ids = vocab.encode(tokenize(caption))
    img_emb = model.img_enc(torch.from_numpy(np.asarray(record.features, dtype=np.float32))[None])[0]
    cap_emb, _ = model.txt_enc(torch.tensor([token_ids]), [len(token_ids)])
    cap_emb = cap_emb[0]
    word_to_region, region_to_word = attention_weights(img_emb, cap_emb, model.config)
    score = model.similarity(img_emb[None], None, cap_emb[None], [len(token_ids)])
    return PairAttention(
        image_id=record.image_id, caption=caption, words=[vocab.idx2word[i] for i in token_ids],
        boxes=np.asarray(record.boxes, dtype=np.float32), image_hw=tuple(record.image_hw),
        cross_attn=model.config.cross_attn, word_to_region=word_to_region.numpy(),
        region_to_word=region_to_word.numpy(),
        word_relevance=relevance(cap_emb, img_emb, word_to_region).numpy(),
        region_relevance=relevance(img_emb, cap_emb, region_to_word).numpy(), score=float(score[0, 0]))
