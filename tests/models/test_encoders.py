"""Encoders: reference parameter names, initialisation, packing, normalisation; SCANModel wiring."""
import math

import pytest
import torch
from torch import nn

from models.config import ModelConfig
from models.encoders import ImageEncoder, SCANModel, TextEncoder
from models.scan import xattn_scores

SMALL = ModelConfig(img_dim=10, word_dim=6, embed_size=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def test_basic_image_encoder_keys_init_and_unit_norm():
    torch.manual_seed(0)
    encoder = ImageEncoder(SMALL)
    assert list(encoder.state_dict()) == ["fc.weight", "fc.bias"]
    bound = math.sqrt(6.0 / (SMALL.img_dim + SMALL.embed_size))
    assert encoder.fc.weight.abs().max() <= bound and encoder.fc.weight.abs().max() > 0.8 * bound
    assert torch.all(encoder.fc.bias == 0)
    out = encoder(torch.randn(3, 5, SMALL.img_dim))
    assert out.shape == (3, 5, SMALL.embed_size)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 5))


def test_weight_norm_image_encoder_matches_its_definition():
    torch.manual_seed(0)
    encoder = ImageEncoder(ModelConfig(img_dim=10, word_dim=6, embed_size=8, precomp_enc_type="weight_norm",
                                       no_imgnorm=True))
    state = encoder.state_dict()
    assert sorted(state) == ["fc.bias", "fc.weight_g", "fc.weight_v"]
    assert state["fc.weight_g"].shape == () and state["fc.weight_v"].shape == (8, 10)
    with torch.no_grad():
        encoder.fc.weight_g.fill_(3.0)
    images = torch.randn(2, 4, 10)
    weight = 3.0 * state["fc.weight_v"] / state["fc.weight_v"].norm()
    torch.testing.assert_close(encoder(images), images @ weight.T + state["fc.bias"])


def test_text_encoder_keys_follow_the_reference():
    keys = set(TextEncoder(20, SMALL).state_dict())
    assert {"embed.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
            "rnn.weight_ih_l0_reverse", "rnn.bias_hh_l0_reverse"} <= keys
    assert TextEncoder(20, SMALL).embed.weight.abs().max() <= 0.1


@pytest.mark.parametrize("lengths, width", [([4, 6, 2], 6), ([3, 1, 3, 2], 7)])
def test_text_encoder_handles_unsorted_lengths_like_one_caption_at_a_time(lengths, width):
    torch.manual_seed(0)
    encoder = TextEncoder(20, SMALL)
    captions = torch.randint(0, 20, (len(lengths), width))
    cap_emb, out_lengths = encoder(captions, lengths)
    assert cap_emb.shape == (len(lengths), width, SMALL.embed_size) and out_lengths.tolist() == lengths
    for row, length in enumerate(lengths):
        words = encoder.embed(captions[row:row + 1, :length])
        out, _ = encoder.rnn(words)                                   # (1, length, 2 * embed)
        halves = (out[..., :SMALL.embed_size] + out[..., SMALL.embed_size:]) / 2
        expected = halves / halves.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(cap_emb[row, :length], expected[0], atol=1e-6, rtol=1e-5)
        assert torch.all(cap_emb[row, length:] == 0)


def test_unidirectional_unnormalised_text_encoder():
    config = ModelConfig(img_dim=10, word_dim=6, embed_size=8, bi_gru=False, no_txtnorm=True, num_layers=2)
    encoder = TextEncoder(20, config)
    cap_emb, _ = encoder(torch.randint(0, 20, (2, 5)), torch.tensor([5, 3]))
    assert cap_emb.shape == (2, 5, 8) and "rnn.weight_ih_l1" in encoder.state_dict()
    assert not torch.allclose(cap_emb[0].norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
def test_scan_model_similarity_uses_its_config_and_trains_every_parameter(cross_attn):
    torch.manual_seed(0)
    config = ModelConfig(img_dim=10, word_dim=6, embed_size=8, cross_attn=cross_attn, agg_func="LogSumExp",
                         lambda_softmax=4.0, raw_feature_norm="clipped_l1norm")
    model = SCANModel(20, config)
    images, img_lens = torch.randn(3, 5, 10), torch.tensor([5, 2, 4])
    img_emb, cap_emb, cap_lens = model(images, torch.randint(0, 20, (3, 4)), [4, 1, 3])
    scores = model.similarity(img_emb, img_lens, cap_emb, cap_lens)
    expected = xattn_scores(img_emb, cap_emb, cap_lens, cross_attn=cross_attn, agg_func="LogSumExp",
                            lambda_softmax=4.0, raw_feature_norm="clipped_l1norm", img_lens=img_lens)
    torch.testing.assert_close(scores, expected)
    scores.sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert isinstance(model.img_enc.fc, nn.Linear)
