"""SCAN's two encoders and the model that pairs them with stacked cross attention.

Parameter names follow the reference implementation (kuanghuei/SCAN model.py) so its
checkpoints load by name: ``fc.weight``/``fc.bias`` (basic image encoder),
``fc.weight_g``/``fc.weight_v``/``fc.bias`` (weight-normalised one) and ``embed.weight``,
``rnn.weight_ih_l0``, ... for the text encoder.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from models.config import HeadConfig, ModelConfig
from models.pooling import GlobalHead, mean_pooled
from models.scan import xattn_scores

L2_EPS = 1e-8  # the reference adds this to the norm (not to the squared norm)


def l2_normalise(x: Tensor, dim: int = -1) -> Tensor:
    """x / (||x|| + eps), the reference's arithmetic, so zero padding stays zero."""
    return x / (x.norm(dim=dim, keepdim=True) + L2_EPS)


class WeightNormLinear(nn.Module):
    """Linear layer with weight w = g * v / ||v|| and a single scalar g (weight_norm, dim=None).

    Written out rather than using the deprecated ``torch.nn.utils.weight_norm`` so the
    parameters keep the reference's names (``weight_g``, ``weight_v``) without warnings.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        linear = nn.Linear(in_features, out_features)  # default init, as the reference
        self.in_features, self.out_features = in_features, out_features
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(linear.weight.detach().norm())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm())
        return nn.functional.linear(x, weight, self.bias)


class ImageEncoder(nn.Module):
    """Projects precomputed region features (B, R, img_dim) into the joint space (B, R, embed_size)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.normalise = not config.no_imgnorm
        if config.precomp_enc_type == "weight_norm":
            self.fc: nn.Module = WeightNormLinear(config.img_dim, config.embed_size)
        else:
            self.fc = nn.Linear(config.img_dim, config.embed_size)
            nn.init.xavier_uniform_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, images: Tensor) -> Tensor:
        features = self.fc(images)
        return l2_normalise(features) if self.normalise else features


class TextEncoder(nn.Module):
    """Word embedding + (bi-)GRU: captions (B, W) -> per-word embeddings (B, W, embed_size)."""

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.normalise = not config.no_txtnorm
        self.bi_gru = config.bi_gru
        self.embed = nn.Embedding(vocab_size, config.word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = nn.GRU(config.word_dim, config.embed_size, config.num_layers,
                          batch_first=True, bidirectional=config.bi_gru)

    def forward(self, captions: Tensor, lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        """Returns (cap_emb (B, W, embed_size), zero beyond each length; lengths (B,) long on CPU)."""
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        packed = pack_padded_sequence(self.embed(captions), lengths, batch_first=True,
                                      enforce_sorted=False)
        words = self.rnn(packed)[0].data  # (real words, directions * embed_size)
        if self.bi_gru:
            forward_half, backward_half = words.chunk(2, dim=-1)
            words = (forward_half + backward_half) / 2
        if self.normalise:
            words = l2_normalise(words)
        return _pad_words(words, packed, lengths, captions.size(1)), lengths


def _pad_words(words: Tensor, packed: PackedSequence, lengths: Tensor, width: int) -> Tensor:
    """Packed per-word rows -> (B, width, D), zero beyond each length, by one gather.

    pad_packed_sequence does the same with one in-place slice copy per distinct length,
    and autograd then copies the whole padded gradient once per copy (a quarter of a
    CPU training step); a gather's backward is a single scatter.
    """
    starts = torch.cumsum(packed.batch_sizes, 0) - packed.batch_sizes   # first row of each time step
    positions = torch.arange(width)
    rows = starts[positions.clamp(max=starts.numel() - 1)][None, :] + packed.unsorted_indices.cpu()[:, None]
    rows = torch.where(positions[None, :] < lengths[:, None], rows, words.size(0))  # padding -> zero row
    padded = torch.cat([words, words.new_zeros(1, words.size(1))])
    return padded.index_select(0, rows.flatten().to(words.device)).view(lengths.numel(), width, -1)


class SCANModel(nn.Module):
    """Both encoders plus the configured stacked-cross-attention similarity, and optionally the
    global head (models.pooling) that gives one vector per image and caption for the first stage.

    The head is built after the encoders, so their seeded initialisation is the same with or
    without it, and its parameters sit under ``global_head.*`` beside SCAN's unchanged keys.
    """

    def __init__(self, vocab_size: int, config: ModelConfig, head: HeadConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.img_enc = ImageEncoder(config)
        self.txt_enc = TextEncoder(vocab_size, config)
        self.global_head = GlobalHead(config.embed_size, head) if head is not None and head.enabled else None
        self._warned_no_head = False

    def forward(self, images: Tensor, captions: Tensor,
                lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Encodes a batch: (img_emb (B, R, D), cap_emb (B, W, D), cap_lens (B,))."""
        cap_emb, cap_lens = self.txt_enc(captions, lengths)
        return self.img_enc(images), cap_emb, cap_lens

    def similarity(self, img_emb: Tensor, img_lens: Tensor | None, cap_emb: Tensor,
                   cap_lens: Tensor | Sequence[int]) -> Tensor:
        """(n_img, n_cap) SCAN scores with this model's attention options."""
        c = self.config
        return xattn_scores(img_emb, cap_emb, cap_lens, cross_attn=c.cross_attn, agg_func=c.agg_func,
                            lambda_softmax=c.lambda_softmax, lambda_lse=c.lambda_lse,
                            raw_feature_norm=c.raw_feature_norm, img_lens=img_lens)

    def image_vectors(self, img_emb: Tensor, img_lens: Tensor) -> Tensor:
        """(n, d) global vectors of encoded images (n, R, d): the head's, else the mean (with a warning)."""
        if self.global_head is None:
            self._warn_no_head()
            return mean_pooled(img_emb, img_lens)
        return self.global_head.image(img_emb, img_lens)

    def text_vectors(self, cap_emb: Tensor, cap_lens: Tensor) -> Tensor:
        """(n, d) global vectors of encoded captions (n, W, d), as ``image_vectors``."""
        if self.global_head is None:
            self._warn_no_head()
            return mean_pooled(cap_emb, torch.as_tensor(cap_lens, device=cap_emb.device))
        return self.global_head.text(cap_emb, cap_lens)

    @property
    def head_kind(self) -> str:
        """"gpo" | "mean" (a trained head) or "untrained-mean" (no head: plain mean pooling)."""
        return "untrained-mean" if self.global_head is None else self.global_head.config.pooling

    def _warn_no_head(self) -> None:
        if not self._warned_no_head:
            warnings.warn("this checkpoint has no trained global head (trained before it existed, or with pooling "
                          "none): the first stage and the global mode use the mean of SCAN's embeddings, which "
                          "SCAN was not trained for; retrain, or train the head stage, for a better shortlist",
                          stacklevel=3)
            self._warned_no_head = True
