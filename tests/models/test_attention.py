"""Attention weights of one pair and their pictures, on a real store and checkpoint."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from models.__main__ import main
from models.attention import attention_weights, explain_pair, relevance
from models.attention_viz import draw_attention, picture_size, region_panels, word_panels
from models.compat import load_model
from models.config import ModelConfig
from models.reference import func_attention
from pipeline.captions import Vocabulary
from pipeline.store import StoreReader
from tests.models.test_search import QUERY, TARGET, known_match_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return known_match_setup(tmp_path_factory.mktemp("attention"), n_images=4)


@pytest.fixture(scope="module")
def explained(setup):
    checkpoint, store, vocab = setup
    model = load_model(checkpoint).model
    return model, explain_pair(model, Vocabulary.from_scan_json(vocab), StoreReader(store).get(TARGET), QUERY)


def test_weights_sum_to_one_and_reproduce_the_model_score(explained):
    model, attention = explained
    assert attention.words == ["<start>", *QUERY.split(), "<end>"]
    n_words, n_regions = len(attention.words), len(attention.boxes)
    assert attention.word_to_region.shape == (n_words, n_regions)
    np.testing.assert_allclose(attention.word_to_region.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(attention.region_to_word.sum(axis=1), 1.0, rtol=1e-5)
    # t2i with Mean aggregation: the score is the mean over words of their relevance
    assert model.config.cross_attn == "t2i" and model.config.agg_func == "Mean"
    assert attention.word_relevance.mean() == pytest.approx(attention.score, rel=1e-5)


@pytest.mark.parametrize("options", [ModelConfig(), ModelConfig(raw_feature_norm="softmax", lambda_softmax=4.0)])
def test_weights_give_the_reference_attended_context(options):
    generator = torch.Generator().manual_seed(0)
    regions, words = torch.randn(5, 6, generator=generator), torch.randn(4, 6, generator=generator)
    word_to_region, region_to_word = attention_weights(regions, words, options)
    smooth, norm = options.lambda_softmax, options.raw_feature_norm
    torch.testing.assert_close(word_to_region @ regions, func_attention(words[None], regions[None], norm, smooth)[0])
    torch.testing.assert_close(region_to_word @ words, func_attention(regions[None], words[None], norm, smooth)[0])
    assert relevance(words, regions, word_to_region).shape == (4,)


@pytest.mark.parametrize("view", ["t2i", "i2t"])
def test_picture_is_a_png_of_the_expected_size(explained, tmp_path, view):
    _, attention = explained
    image = np.random.default_rng(0).integers(0, 255, size=(50, 60, 3), dtype=np.uint8)  # half size: boxes scale
    out = draw_attention(attention, image, tmp_path / f"{view}.png", view=view)
    panels = 1 + len(word_panels(attention) if view == "t2i" else region_panels(attention))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == picture_size(panels)
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.std() > 10          # drawn, not blank


def test_cli_draws_the_pair(setup, tmp_path, capsys):
    checkpoint, store, vocab = setup
    Image.fromarray(np.full((100, 120, 3), 200, dtype=np.uint8)).save(tmp_path / "image.png")
    out = tmp_path / "pictures" / "pair.png"
    code = main(["attention", "--checkpoint", str(checkpoint), "--store", str(store), "--vocab", str(vocab),
                 "--image", TARGET, "--caption", QUERY, "--image-file", str(tmp_path / "image.png"),
                 "--out", str(out)])
    assert code == 0 and str(out) in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.size == picture_size(1 + len(QUERY.split()))
    code = main(["attention", "--checkpoint", str(checkpoint), "--store", str(store), "--vocab", str(vocab),
                 "--image", "missing", "--caption", QUERY, "--out", str(out)])
    assert code == 2 and "missing" in capsys.readouterr().err


def test_i2t_model_pictures_default_to_regions(explained, tmp_path):
    _, attention = explained
    i2t = replace(attention, cross_attn="i2t")
    out = draw_attention(i2t, np.zeros((100, 120, 3), np.uint8), tmp_path / "i2t.png")
    with Image.open(out) as picture:
        assert picture.size == picture_size(1 + len(region_panels(i2t)))
