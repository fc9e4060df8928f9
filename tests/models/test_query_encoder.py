"""The query-time caption encoder: int8 GRU weights, word embeddings as the float32 model's, same rankings."""
from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.encoders import TextEncoder
from models.query_encoder import query_text_encoder, resolve_query_encoder
from models.search import CaptionSet, SearchConfig, SearchIndex
from tests.models.test_search import QUERY, TARGET, known_match_setup


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return TextEncoder(500, ModelConfig(word_dim=48, embed_size=64)).eval()


def test_float32_is_the_trained_encoder_itself(encoder):
    assert query_text_encoder(encoder, "float32") is encoder


@torch.no_grad()
def test_int8_quantizes_the_gru_and_keeps_the_word_embeddings(encoder):
    quantized = query_text_encoder(encoder, "int8")
    assert isinstance(quantized.rnn, torch.ao.nn.quantized.dynamic.GRU)
    assert isinstance(encoder.rnn, torch.nn.GRU)                      # the model's own encoder is untouched
    tokens = torch.randint(4, 500, (6, 12))
    lengths = [12, 12, 9, 5, 3, 1]
    ours, theirs = quantized(tokens, lengths)[0], encoder(tokens, lengths)[0]
    valid = torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    cosine = torch.nn.functional.cosine_similarity(ours[valid], theirs[valid], dim=-1)
    assert cosine.min() > 0.999
    assert torch.all(ours[~valid] == 0)


def test_auto_keeps_exact_search_exact():
    assert resolve_query_encoder("auto", "exact") == "float32"
    assert resolve_query_encoder("auto", "two-stage") == resolve_query_encoder("auto", "global") == "int8"
    assert resolve_query_encoder("float32", "two-stage") == "float32"
    assert resolve_query_encoder("int8", "exact") == "int8"


def test_an_unknown_precision_is_refused(encoder):
    with pytest.raises(ValueError, match="bf16"):
        query_text_encoder(encoder, "bf16")
    with pytest.raises(ValueError, match="bf16"):
        resolve_query_encoder("bf16", "exact")
    with pytest.raises(ValueError, match="query_encoder"):
        SearchConfig(query_encoder="bf16")


def test_int8_and_float32_searches_rank_alike(tmp_path):
    index = SearchIndex.open(*known_match_setup(tmp_path, n_images=30))
    captions = CaptionSet(["big green star", QUERY, "small left of square", "green and star"], ["x", TARGET, "y", "z"])
    results = {}
    for precision in ("int8", "float32"):
        config = SearchConfig(top_k=5, mode="exact", query_encoder=precision)
        [text] = index.search_text([QUERY], config)
        [image] = index.search_images([TARGET], captions, config)
        results[precision] = ([hit.image_id for hit in text.hits], [hit.caption for hit in image.hits],
                              [hit.score for hit in text.hits])
    assert results["int8"][0][0] == TARGET and results["int8"][:2] == results["float32"][:2]
    assert results["int8"][2] == pytest.approx(results["float32"][2], abs=5e-3)   # a 12-wide toy model
