"""Retrieval protocols: ranks against brute force, exact ties, 5-fold vs 5K arithmetic, the dev protocol,
ensembles, output."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.config import EvalConfig, ModelConfig
from models.data import CaptionPairs, PrecompFeatures, image_index_for_captions
from models.encoders import SCANModel
from models.evaluate import (REFERENCE_DEV_IMAGES, encode_split, evaluate_models, evaluate_similarities,
                             evaluation_pairs, fold_slices, format_table, i2t_ranks, retrieval_results, save_results,
                             similarity_matrix, t2i_ranks)


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


def pessimistic_ranks(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute force of the documented tie rule: candidates in descending score order with, among equal
    scores, the wrong ones first; the rank is the position of the first true candidate."""
    def first_true(scores: np.ndarray, true: set[int]) -> int:
        order = sorted(range(len(scores)), key=lambda c: (-scores[c], c in true))
        return next(position for position, c in enumerate(order) if c in true)
    n_img = sims.shape[0]
    return (np.array([first_true(sims[i], set(range(5 * i, 5 * i + 5))) for i in range(n_img)]),
            np.array([first_true(sims[:, c], {c // 5}) for c in range(5 * n_img)]))


def test_exact_ties_count_against_the_query():
    sims = np.zeros((3, 15), dtype=np.float32)
    sims[0, 0:5] = [0.5, 0.5, 0.1, 0.1, 0.1]   # image 0: two true captions tie for best, nothing above: rank 0
    sims[1, 5:10] = [0.2, 0.7, 0.3, 0.3, 0.3]  # image 1: best true caption 0.7 ties with one wrong caption
    sims[1, 14] = 0.7
    sims[2, 10:15] = 0.4                      # image 2: two wrong captions tie at 0.4, one above
    sims[2, [0, 1]], sims[2, 2] = 0.4, 0.45
    assert i2t_ranks(sims).tolist() == [0, 1, 3]
    sims[:, 3] = [0.6, 0.6, 0.0]              # caption 3 (image 0): image 1 ties with its image
    sims[:, 12] = [0.9, 0.4, 0.4]             # caption 12 (image 2): one above, one tied
    t2i = t2i_ranks(sims)
    assert t2i[3] == 1 and t2i[12] == 2
    np.testing.assert_array_equal(i2t_ranks(sims), pessimistic_ranks(sims)[0])
    np.testing.assert_array_equal(t2i, pessimistic_ranks(sims)[1])


def test_tie_rule_against_brute_force_on_many_ties():
    sims = np.random.default_rng(3).integers(0, 4, size=(9, 45)).astype(np.float32) / 4   # 4 levels: ties everywhere
    expected_i2t, expected_t2i = pessimistic_ranks(sims)
    np.testing.assert_array_equal(i2t_ranks(sims), expected_i2t)
    np.testing.assert_array_equal(t2i_ranks(sims), expected_t2i)
    sims[0, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        t2i_ranks(sims)


def test_every_protocol_ranks_ties_the_same_way(tiny_split):
    """5-fold (through evaluate_similarities) and a real model's ensemble on two identical images."""
    sims = np.full((50, 250), 0.1, dtype=np.float32)
    sims[np.arange(250) // 5, np.arange(250)] = 0.5
    sims[np.arange(1, 50, 10), np.arange(0, 250, 50)] = 0.5           # each fold: caption 0 ties with image 1
    _, ranks = evaluate_similarities(lambda i, c: sims[i, c], 50, fold5=True, fold_images=10)
    assert ranks["t2i"][::50].tolist() == [1] * 5 and ranks["t2i"].sum() == 5
    _, five_k = evaluate_similarities(lambda i, c: sims[i, c], 50, fold5=False)
    np.testing.assert_array_equal(five_k["t2i"], ranks["t2i"])

    features = np.load(tiny_split.regions.path)
    features[1] = features[0]                                            # image 1 is image 0: exact ties
    np.save(tiny_split.regions.path, features)
    pairs = CaptionPairs(PrecompFeatures(tiny_split.regions.path), tiny_split.captions, tiny_split.image_index)
    models, config, cpu = [tiny_model(0), tiny_model(1)], EvalConfig(batch_size=3), torch.device("cpu")
    _, ranks = evaluate_models(models, pairs, config, cpu)
    ensemble = np.mean([similarity_matrix(m, encode_split(m, pairs, config, cpu), config) for m in models], axis=0)
    assert (ensemble[0] == ensemble[1]).all() and ranks["t2i"][:10].min() >= 1   # the twin ties with the true image
    np.testing.assert_array_equal(ranks["t2i"], pessimistic_ranks(ensemble)[1])
    np.testing.assert_array_equal(ranks["i2t"], pessimistic_ranks(ensemble)[0])


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


def dev_pairs(tmp_path, n_images: int) -> CaptionPairs:
    np.save(tmp_path / "dev_ims.npy", np.random.default_rng(4).normal(size=(n_images, 2, 8)).astype(np.float32))
    captions = [[1, 4 + i % 8, 2] for i in range(5 * n_images)]
    return CaptionPairs(PrecompFeatures(tmp_path / "dev_ims.npy"), captions,
                        image_index_for_captions(n_images, 5 * n_images, source="caps"))


def test_reference_dev_protocol_keeps_the_first_5000_captions(tmp_path):
    pairs = dev_pairs(tmp_path, 1014)   # Flickr30K's precomp dev: 1014 images, 5070 captions
    scored, protocol = evaluation_pairs(pairs, "dev", reference_dev=True)
    assert (len(scored.regions), len(scored)) == (REFERENCE_DEV_IMAGES, 5000)   # data.py:46-47: length = 5000
    assert scored.captions == pairs.captions[:5000] and scored.image_index.tolist() == pairs.image_index[:5000].tolist()
    np.testing.assert_array_equal(scored.regions.read([999])[0], pairs.regions.read([999])[0])
    assert protocol.describe() == ("dev, reference protocol: the first 1000 images / 5000 captions of 1014 / 5070 "
                                   "(--no-reference-dev: all)")
    full, protocol = evaluation_pairs(pairs, "dev", reference_dev=False)
    assert full is pairs and protocol.as_dict()["images"] == 1014 and "full split" in protocol.describe()
    test, protocol = evaluation_pairs(pairs, "test", reference_dev=True)
    assert test is pairs and protocol.describe() == "test: 1014 images / 5070 captions"
    small, protocol = evaluation_pairs(dev_pairs(tmp_path, 6), "dev", reference_dev=True)
    assert len(small) == 30 and "fails on fewer" in protocol.describe()
