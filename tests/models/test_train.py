"""Training on a small synthetic matching problem: learning, checkpoints, exact resume."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.compat import load_model
from models.config import EvalConfig, ModelConfig, TrainConfig
from models.data import CaptionPairs, PrecompFeatures, image_index_for_captions
from models.evaluate import evaluate_models
from models.train import BEST_CHECKPOINT, LAST_CHECKPOINT, SUMMARY, Ranks, epoch_batches, train

CONCEPTS = tuple(f"word{i}" for i in range(20))
FIRST_WORD_ID = 4          # ids 0..3: <pad>, <start>, <end>, <unk>, as SCAN's vocabulary
VOCAB_SIZE = FIRST_WORD_ID + len(CONCEPTS)
IMG_DIM = 16
MODEL = ModelConfig(img_dim=IMG_DIM, word_dim=16, embed_size=32)
TRAIN = TrainConfig(learning_rate=5e-3, num_epochs=2, lr_update=6, batch_size=25, workers=0,
                    warmup_epochs=1, log_step=2, seed=3, device="cpu")


def synthetic_split(n_images: int, seed: int, per_image: int) -> tuple[np.ndarray, list[list[str]]]:
    """Image i shows two of 20 concepts (one region each); its captions
    name both, in random order.

    Region features are a fixed prototype per concept plus noise, so a split drawn with another
    seed holds new images and new concept pairs: matching them needs both encoders to learn.
    """
    prototypes = np.random.default_rng(99).normal(size=(len(CONCEPTS), IMG_DIM))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(len(CONCEPTS), size=2, replace=False) for _ in range(n_images)]
    features = np.stack([np.stack([prototypes[a], prototypes[b]]) for a, b in chosen])
    features = (features + 0.3 * rng.normal(size=features.shape)).astype(np.float32)
    captions = [[CONCEPTS[c] for c in rng.permutation(pair)] for pair in chosen for _ in range(per_image)]
    return features, captions


def token_ids(words: list[str]) -> list[int]:
    return [1, *(FIRST_WORD_ID + CONCEPTS.index(w) for w in words), 2]


def precomp_pairs(tmp_path, name: str, n_images: int, seed: int, per_image: int = 5) -> CaptionPairs:
    """One caption per training image keeps identical captions (false negatives) out of batches."""
    features, captions = synthetic_split(n_images, seed, per_image)
    np.save(tmp_path / f"{name}_ims.npy", features)
    return CaptionPairs(PrecompFeatures(tmp_path / f"{name}_ims.npy"), [token_ids(c) for c in captions],
                        image_index_for_captions(n_images, len(captions), source=name))


def test_epoch_batches_split_global_batches_across_ranks():
    one = epoch_batches(10, 4, seed=1, epoch=0, ranks=Ranks(0, 1, torch.device("cpu")))
    halves = [epoch_batches(10, 4, seed=1, epoch=0, ranks=Ranks(r, 2, torch.device("cpu"))) for r in (0, 1)]
    assert [len(b) for b in one] == [4, 4, 2]
    assert [a + b for a, b in zip(*halves)] == one
    assert sorted(sum(one, [])) == list(range(10))
    assert epoch_batches(10, 4, 1, 1, Ranks(0, 1, torch.device("cpu"))) != one
    odd = epoch_batches(9, 4, seed=1, epoch=0, ranks=Ranks(1, 2, torch.device("cpu")))
    assert [len(b) for b in odd] == [2, 2]   # the last global batch (1 caption) cannot be split


@pytest.mark.slow
def test_training_learns_a_synthetic_matching_problem(tmp_path):
    train_pairs = precomp_pairs(tmp_path, "train", 100, seed=0, per_image=1)
    dev_pairs = precomp_pairs(tmp_path, "dev", 20, seed=1)
    seen = []
    summary = train(MODEL, replace(TRAIN, num_epochs=8), VOCAB_SIZE, train_pairs, dev_pairs,
                    tmp_path / "run", progress=seen.append)
    last = summary["history"][-1]
    print("synthetic dev after 8 epochs:", {d: last[d] for d in ("i2t", "t2i", "rsum")})
    assert last["i2t"]["r1"] >= 50.0 and last["t2i"]["r1"] >= 25.0    # chance: about 5% each
    assert summary["best_rsum"] == max(h["rsum"] for h in summary["history"])
    assert summary["epochs"] == 8 and summary["steps"] == 32
    assert {"loss", "lr"} <= seen[0].keys() and seen[-1]["done"]
    first_lr, last_lr = seen[0]["lr"], [s["lr"] for s in seen if "lr" in s][-1]
    assert last_lr == pytest.approx(first_lr * 0.1)     # lr x0.1 after lr_update epochs
    run = tmp_path / "run"
    assert json.loads((run / SUMMARY).read_text())["best_epoch"] == summary["best_epoch"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run.glob(".*.tmp"))
    best = load_model(run / BEST_CHECKPOINT)
    assert best.origin == "ours" and best.vocab_size == VOCAB_SIZE and best.model.config == MODEL


def test_resume_after_an_epoch_gives_the_same_weights(tmp_path):
    train_pairs = precomp_pairs(tmp_path, "train", 30, seed=0, per_image=1)
    dev_pairs = precomp_pairs(tmp_path, "dev", 4, seed=1)
    config = replace(TRAIN, warmup_epochs=1, lr_update=1, batch_size=10)
    train(MODEL, config, VOCAB_SIZE, train_pairs, dev_pairs, tmp_path / "straight")
    train(MODEL, replace(config, num_epochs=1), VOCAB_SIZE, train_pairs, dev_pairs, tmp_path / "stopped")
    summary = train(MODEL, config, VOCAB_SIZE, train_pairs, dev_pairs, tmp_path / "stopped")
    straight = torch.load(tmp_path / "straight" / LAST_CHECKPOINT, weights_only=True)
    resumed = torch.load(tmp_path / "stopped" / LAST_CHECKPOINT, weights_only=True)
    assert summary["epochs"] == 2 and resumed["step"] == straight["step"] == 6
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert resumed["history"] == straight["history"]
    assert resumed["scheduler"] == straight["scheduler"]


def test_training_refuses_bad_settings(tmp_path):
    pairs = precomp_pairs(tmp_path, "train", 4, seed=0)
    with pytest.raises(ValueError, match="bf16"):
        train(MODEL, replace(TRAIN, bf16=True), VOCAB_SIZE, pairs, pairs, tmp_path / "run")
    assert not (tmp_path / "run" / LAST_CHECKPOINT).exists()


def test_dev_validation_is_the_evaluation_of_the_saved_model(tmp_path):
    """The dev recalls in the history are what evaluate_models reports for model_best, with the given config."""
    train_pairs, dev_pairs = precomp_pairs(tmp_path, "train", 40, seed=0), precomp_pairs(tmp_path, "dev", 12, seed=1)
    config = EvalConfig(split="dev", batch_size=2, score_memory_mb=1, fused_scores=False)
    summary = train(MODEL, replace(TRAIN, num_epochs=1), VOCAB_SIZE, train_pairs, dev_pairs, tmp_path / "run",
                    eval_config=config)
    [validated] = summary["history"]
    expected, _ = evaluate_models([load_model(tmp_path / "run" / BEST_CHECKPOINT).model], dev_pairs, config,
                                  torch.device("cpu"))
    for direction in ("i2t", "t2i"):
        assert validated[direction] == pytest.approx(expected[direction])
    assert validated["rsum"] == pytest.approx(expected["rsum"])
    assert validated["rsum"] == pytest.approx(sum(validated[d][k] for d in ("i2t", "t2i") for k in ("r1", "r5", "r10")))
