"""The global head's training: the frozen stage leaves SCAN exactly as without it; joint training runs."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.compat import load_model, read_checkpoint
from models.config import EvalConfig, HeadConfig
from models.evaluate import evaluate_models
from models.head_training import HEAD_CHECKPOINT
from models.train import BEST_CHECKPOINT, LAST_CHECKPOINT, SUMMARY, train
from tests.models.test_train import MODEL, TRAIN, VOCAB_SIZE, precomp_pairs

CONFIG = replace(TRAIN, num_epochs=3)
HEAD = HeadConfig(head_epochs=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("head")
    pairs = precomp_pairs(folder, "train", 300, 0, 1), precomp_pairs(folder, "dev", 60, 1)
    torch.set_num_threads(1)
    summaries = {name: train(MODEL, CONFIG, VOCAB_SIZE, *pairs, folder / name, head_config=head)
                 for name, head in (("plain", HeadConfig(pooling="none")), ("frozen", HEAD))}
    return folder, pairs, summaries


def test_frozen_stage_leaves_scan_exactly_as_trained_without_a_head(runs):
    folder, _, summaries = runs
    plain, frozen = (read_checkpoint(folder / "plain" / BEST_CHECKPOINT),
                     read_checkpoint(folder / "frozen" / BEST_CHECKPOINT))
    assert set(plain["model"]) == {key for key in frozen["model"] if not key.startswith("global_head.")}
    for key, value in plain["model"].items():
        assert torch.equal(value, frozen["model"][key]), key
    assert summaries["plain"]["history"] == summaries["frozen"]["history"]
    assert "head_config" not in plain and frozen["head_config"]["pooling"] == "gpo"
    last = read_checkpoint(folder / "frozen" / LAST_CHECKPOINT)
    assert not any(key.startswith("global_head.") for key in last["model"])
    on_disk = json.loads((folder / "frozen" / SUMMARY).read_text())
    assert on_disk["head"]["epochs"] == 2 and len(on_disk["head"]["history"]) == 2


def test_trained_head_beats_mean_pooling_on_held_out_pairs(runs):
    folder, (_, dev), _ = runs
    config = EvalConfig(split="dev", modes=("global",))
    headed = load_model(folder / "frozen" / BEST_CHECKPOINT).model
    without = load_model(folder / "plain" / BEST_CHECKPOINT).model
    assert headed.head_kind == "gpo" and without.head_kind == "untrained-mean"
    trained, _ = evaluate_models([headed], dev, config, torch.device("cpu"))
    with pytest.warns(UserWarning, match="no trained global head"):
        baseline, _ = evaluate_models([without], dev, config, torch.device("cpu"))
    assert trained["rsum"] > baseline["rsum"] + 10


def test_head_stage_resumes_to_the_same_head(runs, tmp_path):
    folder, pairs, _ = runs
    train(MODEL, CONFIG, VOCAB_SIZE, *pairs, tmp_path, head_config=replace(HEAD, head_epochs=1))
    assert (tmp_path / HEAD_CHECKPOINT).is_file()
    train(MODEL, CONFIG, VOCAB_SIZE, *pairs, tmp_path, head_config=HEAD)
    straight, resumed = (read_checkpoint(path / BEST_CHECKPOINT)["model"] for path in (folder / "frozen", tmp_path))
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


def test_joint_training_adds_the_head_term_and_saves_the_head(runs, tmp_path):
    _, pairs, _ = runs
    summary = train(MODEL, replace(CONFIG, num_epochs=2), VOCAB_SIZE, *pairs, tmp_path,
                    head_config=HeadConfig(head_training="joint", head_weight=0.5))
    assert "head" not in summary  # no extra stage
    payload = read_checkpoint(tmp_path / BEST_CHECKPOINT)
    assert payload["head_config"]["head_training"] == "joint"
    model = load_model(tmp_path / BEST_CHECKPOINT).model
    assert model.head_kind == "gpo"
    results, _ = evaluate_models([model], pairs[1], EvalConfig(split="dev", modes=("exact", "global", "two-stage")),
                                 torch.device("cpu"))
    assert set(results["modes"]) == {"exact", "global", "two-stage"} and np.isfinite(results["modes"]["global"]["rsum"])
