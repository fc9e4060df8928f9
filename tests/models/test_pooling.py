"""The global head: GPO against a plain re-statement of VSE-infinity's rule, masking, and the fallback.

Reference: Chen et al., "Learning the Best Pooling Strategy for Visual Semantic Embedding", CVPR 2021;
woodfrog/vse_infty lib/modules/aggr/gpo.py (GPO.compute_pool_weights: sinusoidal encodings of positions
0..n-1 through a bi-GRU, directions averaged, a linear score, softmax at temperature 0.1; GPO.forward:
features sorted in descending order per dimension, padding excluded, weighted sum over positions).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.config import HeadConfig, ModelConfig
from models.encoders import SCANModel
from models.pooling import GeneralisedPooling, GlobalHead, mean_pooled, positional_encoding


def restated_gpo(pool: GeneralisedPooling, emb: torch.Tensor, lens: list[int]) -> torch.Tensor:
    """One item at a time, with lists and loops: the rule as the paper's code states it."""
    out = []
    for item, n in zip(emb, lens):
        encodings = torch.tensor([[math.sin(p / 10000 ** (i / pool.pe_dim)) if i % 2 == 0 else
                                   math.cos(p / 10000 ** ((i - 1) / pool.pe_dim)) for i in range(pool.pe_dim)]
                                  for p in range(n)])
        hidden = pool.gru(encodings[None])[0][0]                    # (n, 2 h), no padding at all
        half = hidden.size(1) // 2
        scores = pool.score((hidden[:, :half] + hidden[:, half:]) / 2).squeeze(1)
        weights = torch.softmax(scores / 0.1, dim=0)
        ordered = torch.sort(item[:n], dim=0, descending=True).values
        out.append((ordered * weights[:, None]).sum(dim=0))
    return torch.stack(out)


def test_positional_encoding_is_the_sinusoid():
    encoding = positional_encoding(5, 6)
    assert encoding[3, 2] == pytest.approx(math.sin(3 / 10000 ** (2 / 6)))
    assert encoding[4, 5] == pytest.approx(math.cos(4 / 10000 ** (4 / 6)))


def test_gpo_equals_the_restated_rule_with_padding():
    torch.manual_seed(0)
    pool = GeneralisedPooling(pe_dim=8, hidden=6)
    lens = [5, 2, 3, 5, 1]
    emb = torch.randn(5, 5, 4)
    emb[1, 2:] = 100.0  # padding must not count, even when large
    with torch.no_grad():
        torch.testing.assert_close(pool(emb, torch.tensor(lens)), restated_gpo(pool, emb, lens), rtol=1e-5, atol=1e-6)


def test_gpo_spans_max_and_mean_pooling():
    pool = GeneralisedPooling(pe_dim=8, hidden=6)
    emb = torch.randn(3, 4, 5)
    lens = torch.tensor([4, 4, 4])
    with torch.no_grad():
        pool.score.weight.zero_()           # equal scores: uniform weights = mean pooling
        torch.testing.assert_close(pool(emb, lens), emb.mean(dim=1))


def test_head_outputs_unit_vectors_and_starts_as_identity_projection():
    head = GlobalHead(6, HeadConfig(pooling="mean"))
    emb, lens = torch.randn(4, 3, 6), torch.tensor([3, 1, 2, 3])
    img, txt = head(emb, lens, emb, lens)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(4))
    expected = mean_pooled(emb, lens)
    torch.testing.assert_close(img, expected / expected.norm(dim=1, keepdim=True))
    torch.testing.assert_close(img, txt)


def test_encoders_are_initialised_the_same_with_and_without_a_head():
    config = ModelConfig(img_dim=10, word_dim=6, embed_size=8)
    torch.manual_seed(4)
    plain = SCANModel(20, config)
    torch.manual_seed(4)
    headed = SCANModel(20, config, HeadConfig())
    for key, value in plain.state_dict().items():
        assert torch.equal(value, headed.state_dict()[key]), key
    assert {k for k in headed.state_dict() if k not in plain.state_dict()} == {
        k for k in headed.state_dict() if k.startswith("global_head.")}
    assert SCANModel(20, config, HeadConfig(pooling="none")).global_head is None


def test_a_model_without_head_falls_back_to_mean_pooling_with_one_warning():
    model = SCANModel(20, ModelConfig(img_dim=10, word_dim=6, embed_size=8))
    emb, lens = torch.randn(2, 3, 8), torch.tensor([1, 3])
    with pytest.warns(UserWarning, match="no trained global head"):
        vectors = model.image_vectors(emb, lens)
    torch.testing.assert_close(vectors, torch.stack([emb[0, 0], emb[1].mean(dim=0)]))
    assert model.head_kind == "untrained-mean"
    np.testing.assert_allclose(model.text_vectors(emb, lens).numpy(), vectors.numpy())  # warned once already
