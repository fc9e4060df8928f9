"""A global embedding beside SCAN: one vector per image and per caption, for a vector index.

SCAN scores a pair by stacked cross attention, which cannot be precomputed per item; a first
stage that scans millions of items needs one vector per item and a dot product. The head pools
SCAN's own region (or word) embeddings, so one checkpoint serves both stages.

Pooling is generalised pooling (GPO) as in VSE-infinity (Chen et al., "Learning the Best Pooling
Strategy for Visual Semantic Embedding", CVPR 2021; woodfrog/vse_infty, lib/modules/aggr/gpo.py):
each dimension's values over an item's real regions are sorted in descending order and summed
with weights that depend only on the sorted position and the item's length. The weights come
from sinusoidal encodings of the positions fed through a small bidirectional GRU (the two
directions averaged) and a linear score, softmax over the positions at temperature 0.1. One
profile covers max pooling (all weight on the first), mean pooling (uniform) and anything between.

Before pooling, each modality has a learned linear map (identity at start) of the SCAN embeddings:
SCAN trains them for word-region attention, not for a global dot product, and with SCAN's encoders
frozen this map is what aligns the two pooled spaces. Mean pooling (`pooling="mean"`) is the
baseline GPO must beat; a checkpoint without a head gets `mean_pooled`, the untrained first stage.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.config import HeadConfig

GPO_TEMPERATURE = 0.1   # VSE-infinity's softmax temperature over positions
L2_EPS = 1e-8


def positional_encoding(length: int, dim: int) -> Tensor:
    """(length, dim) sinusoidal encodings of positions 0..length-1 (Vaswani et al.), dim even."""
    if dim % 2:
        raise ValueError(f"positional encoding needs an even dimension, got {dim}")
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(length, dim)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)
    return encoding


def length_mask(lens: Tensor, width: int) -> Tensor:
    """(B, width) True on the first lens[b] positions."""
    return torch.arange(width, device=lens.device)[None, :] < lens[:, None]


def mean_pooled(emb: Tensor, lens: Tensor) -> Tensor:
    """(B, d) mean of each item's real embeddings (B, L, d): the untrained first stage, not normalised."""
    lens = torch.as_tensor(lens, dtype=torch.long, device=emb.device)
    mask = length_mask(lens, emb.size(1))[..., None]
    return (emb * mask).sum(dim=1) / lens[:, None].clamp(min=1).to(emb.dtype)


class GeneralisedPooling(nn.Module):
    """GPO: per dimension, a learned weighting of the item's values sorted in descending order."""

    def __init__(self, pe_dim: int, hidden: int) -> None:
        super().__init__()
        self.pe_dim = pe_dim
        self.gru = nn.GRU(pe_dim, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(hidden, 1, bias=False)

    def position_weights(self, lens: Tensor, width: int) -> Tensor:
        """(B, width) softmax weights over sorted positions, zero past each length.

        The weights depend on the length only, so the GRU runs once per distinct length.
        """
        lengths, inverse = torch.unique(lens.cpu(), return_inverse=True)
        longest = int(lengths.max())
        encodings = positional_encoding(longest, self.pe_dim).to(self.score.weight.device)
        encodings = encodings.expand(len(lengths), -1, -1)
        packed = pack_padded_sequence(encodings, lengths, batch_first=True, enforce_sorted=False)
        hidden = pad_packed_sequence(self.gru(packed)[0], batch_first=True)[0]   # (U, longest, 2 hidden)
        forward_half, backward_half = hidden.chunk(2, dim=-1)
        scores = self.score((forward_half + backward_half) / 2).squeeze(-1)      # (U, longest)
        scores = scores.masked_fill(~length_mask(lengths.to(scores.device), longest), float("-inf"))
        weights = torch.softmax(scores / GPO_TEMPERATURE, dim=1)
        weights = nn.functional.pad(weights, (0, max(0, width - longest)))[:, :width]
        return weights[inverse.to(weights.device)]

    def forward(self, emb: Tensor, lens: Tensor) -> Tensor:
        """emb (B, L, d), lens (B,) -> (B, d)."""
        lens = torch.as_tensor(lens, dtype=torch.long, device=emb.device)
        mask = length_mask(lens, emb.size(1))[..., None]
        ordered = emb.masked_fill(~mask, float("-inf")).sort(dim=1, descending=True).values
        ordered = ordered.masked_fill(~mask, 0.0)   # padding sorted last, then zeroed
        weights = self.position_weights(lens, emb.size(1)).to(emb.dtype)
        return (ordered * weights[..., None]).sum(dim=1)


class MeanPooling(nn.Module):
    """Mean over real positions, as a module (the ablation baseline of GPO)."""

    def forward(self, emb: Tensor, lens: Tensor) -> Tensor:
        return mean_pooled(emb, lens)


class ModalityHead(nn.Module):
    """Linear map (identity at start), pooling, L2 normalisation: (B, L, d) -> (B, d)."""

    def __init__(self, dim: int, config: HeadConfig) -> None:
        super().__init__()
        self.project = nn.Linear(dim, dim)
        nn.init.eye_(self.project.weight)
        nn.init.zeros_(self.project.bias)
        self.pool = (GeneralisedPooling(config.gpo_pe_dim, config.gpo_hidden) if config.pooling == "gpo"
                     else MeanPooling())

    def forward(self, emb: Tensor, lens: Tensor) -> Tensor:
        pooled = self.pool(self.project(emb), lens)
        return pooled / (pooled.norm(dim=-1, keepdim=True) + L2_EPS)


class GlobalHead(nn.Module):
    """One head per modality over SCAN's joint-space embeddings; both outputs are unit vectors."""

    def __init__(self, dim: int, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.image = ModalityHead(dim, config)
        self.text = ModalityHead(dim, config)

    def forward(self, img_emb: Tensor, img_lens: Tensor, cap_emb: Tensor,
                cap_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(images (B, d), captions (B, d)); one call so DDP sees every parameter used."""
        return self.image(img_emb, img_lens), self.text(cap_emb, cap_lens)

