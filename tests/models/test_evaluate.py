"""Retrieval protocols: ranks against brute force, 5-fold vs 5K arithmetic, ensembles, output."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.config import EvalConfig, ModelConfig
from models.data import CaptionPairs, PrecompFeatures, image_index_for_captions
from models.encoders import SCANModel
from models.evaluate import (encode_split, evaluate_models, evaluate_similarities, fold_slices, format_table,
                             i2t_ranks, retrieval_results, save_results, similarity_matrix, t2i_ranks)


def reference_ranks(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference i2t()/t2i() loops: argsort descending, best true position."""
    n_img = sims.shape[0]
    i2t = np.array([min(np.where(np.argsort(sims[i])[::-1] == c)[0][0] for c in range(5 * i, 5 * i + 5))
                    for i in range(n_img)])
    t2i = np.array([np.where(np.argsort(sims[:, c])[::-1] == c // 5)[0][0] for c in range(5 * n_img)])
    return i2t, t2i


def test_ranks_match_the_reference_loops():
    sims = np.random.default_rng(0).normal(size=(12, 60)).astype(np.float32)
    sims[np.arange(60) // 5, np.arange(60)] += 1.5
    expected_i2t, expected_t2i = reference_ranks(sims)
    np.testing.assert_array_equal(i2t_ranks(sims), expected_i2t)
    np.testing.assert_array_equal(t2i_ranks(sims), expected_t2i)


def test_known_ranks_and_recalls():
    sims = np.zeros((2, 10), dtype=np.float32)
    sims[0, [0, 1, 2, 3, 4]] = [0.1, 0.5, 0.2, 0.2, 0.2]   # image 0: best true caption (0.5) beaten by two
    sims[0, [5, 6]] = [0.6, 0.7]
    sims[1, 5:] = 0.9                                       # image 1: all true captions first
    assert i2t_ranks(sims).tolist() == [2, 0]
    assert t2i_ranks(sims).tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    results, _ = retrieval_results(sims)
    assert results["i2t"] == {"r1": 50.0, "r5": 100.0, "r10": 100.0, "medr": 2.0, "meanr": 2.0}
    assert results["rsum"] == pytest.approx(50 + 100 + 100 + 300)


def five_k_matrix(fold_images: int = 10) -> np.ndarray:
    """5 folds; other folds' pairs score 2.0 (so only the 5K protocol sees them); in fold f,
    image 0 of the fold also scores 0.95 with the captions of its next f images (i2t rank 5f)."""
    n_img = 5 * fold_images
    sims = np.random.default_rng(1).uniform(0, 0.5, size=(n_img, 5 * n_img)).astype(np.float32)
    fold_of_image, fold_of_caption = np.arange(n_img) // fold_images, np.arange(5 * n_img) // (5 * fold_images)
    sims[fold_of_image[:, None] != fold_of_caption[None, :]] = 2.0
    sims[np.arange(5 * n_img) // 5, np.arange(5 * n_img)] = 1.0
    for fold in range(5):
        first = fold * fold_images
        sims[first, 5 * first:5 * (first + 1)] = 0.9
        sims[first, 5 * (first + 1):5 * (first + 1 + fold)] = 0.95
    return sims


def test_five_fold_protocol_slices_and_averages():
    sims, calls = five_k_matrix(), []

    def block(images: slice, captions: slice) -> np.ndarray:
        calls.append((images, captions))
        return sims[images, captions]

    results, ranks = evaluate_similarities(block, 50, fold5=True, fold_images=10)
    assert calls == [(slice(10 * f, 10 * f + 10), slice(50 * f, 50 * f + 50)) for f in range(5)]
    assert results["i2t"] == pytest.approx({"r1": 92.0, "r5": 92.0, "r10": 94.0, "medr": 1.0, "meanr": 2.0})
    assert results["t2i"] == pytest.approx({"r1": 100.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.0})
    assert results["rsum"] == pytest.approx(578.0)
    assert [fold["i2t"]["r1"] for fold in results["folds"]] == [100.0, 90.0, 90.0, 90.0, 90.0]
    assert ranks["i2t"][::10].tolist() == [0, 5, 10, 15, 20] and ranks["t2i"].max() == 0


def test_full_5k_protocol_sees_every_image():
    sims = five_k_matrix()
    results, ranks = evaluate_similarities(lambda i, c: sims[i, c], 50, fold5=False)
    assert ranks["i2t"].min() == 200       # the 200 captions of the other folds score higher
    assert (ranks["t2i"] == 40).all()      # the 40 images of the other folds score higher
    assert results["rsum"] == 0.0 and results["t2i"]["medr"] == 41.0
    with pytest.raises(ValueError, match="5 x 1000"):
        fold_slices(50, fold5=True)


@pytest.fixture()
def tiny_split(tmp_path):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "ims.npy", rng.normal(size=(4, 3, 8)).astype(np.float32))
    captions = [[1, *rng.integers(4, 12, size=rng.integers(1, 5)).tolist(), 2] for _ in range(20)]
    return CaptionPairs(PrecompFeatures(tmp_path / "ims.npy"), captions,
                        image_index_for_captions(4, 20, source="caps"))


def tiny_model(seed: int) -> SCANModel:
    torch.manual_seed(seed)
    return SCANModel(12, ModelConfig(img_dim=8, word_dim=6, embed_size=16)).eval()


def test_ensemble_averages_similarity_matrices(tiny_split):
    config, cpu = EvalConfig(batch_size=3), torch.device("cpu")
    first, second = tiny_model(0), tiny_model(1)
    sims = [similarity_matrix(m, encode_split(m, tiny_split, config, cpu), config) for m in (first, second)]
    expected, expected_ranks = retrieval_results((sims[0] + sims[1]) / 2)
    results, ranks = evaluate_models([first, second], tiny_split, config, cpu)
    assert results == expected
    np.testing.assert_array_equal(ranks["t2i"], expected_ranks["t2i"])
    alone, _ = evaluate_models([first], tiny_split, config, cpu)
    shuffled = CaptionPairs(tiny_split.regions, tiny_split.captions, tiny_split.image_index[::-1])
    with pytest.raises(ValueError, match="image j // 5"):
        evaluate_models([first], shuffled, config, cpu)
    assert evaluate_models([first, first], tiny_split, config, cpu)[0] == alone


def test_encoding_in_batches_matches_one_batch(tiny_split):
    model, cpu = tiny_model(0), torch.device("cpu")
    small = encode_split(model, tiny_split, EvalConfig(batch_size=3), cpu)
    whole = encode_split(model, tiny_split, EvalConfig(batch_size=100), cpu)
    torch.testing.assert_close(small.cap_emb, whole.cap_emb)
    torch.testing.assert_close(small.img_emb, whole.img_emb)
    assert small.cap_lens.tolist() == [len(c) for c in tiny_split.captions]


def test_results_saved_as_json_and_ranks(tmp_path):
    sims = five_k_matrix()
    results, ranks = evaluate_similarities(lambda i, c: sims[i, c], 50, fold5=False)
    save_results(results, ranks, tmp_path / "out" / "eval.json")
    assert json.loads((tmp_path / "out" / "eval.json").read_text()) == results
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "eval_i2t_ranks.npy"), ranks["i2t"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "eval.json", "eval_i2t_ranks.npy", "eval_t2i_ranks.npy"]
    table = format_table(results)
    assert "R@1" in table and table.splitlines()[-1].split() == ["rsum", "0.0"]
