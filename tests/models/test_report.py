"""The results page of a tiny model really trained with models.train, evaluated and explained."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.attention import explain_pair
from models.attention_viz import draw_attention
from models.compat import load_model
from models.config import EvalConfig, ModelConfig, TrainConfig
from models.data import CaptionPairs, PrecompFeatures, image_index_for_captions
from models.evaluate import evaluate_models, save_results
from models.report import PAPER_RESULTS, read_train_log, write_report
from models.train import BEST_CHECKPOINT, train
from pipeline.captions import SPECIALS, Vocabulary
from pipeline.errors import InputError
from pipeline.store import RegionRecord

CONCEPTS = ("red", "blue", "green", "circle", "square", "star")
VOCAB = Vocabulary(SPECIALS + CONCEPTS)
IMG_DIM, EPOCHS = 8, 2


def concept_pairs(tmp_path, name: str, n_images: int, seed: int, per_image: int = 1) -> CaptionPairs:
    """Each image: two concept regions (prototype + noise); its captions name both concepts."""
    prototypes = np.random.default_rng(7).normal(size=(len(CONCEPTS), IMG_DIM))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(len(CONCEPTS), size=2, replace=False) for _ in range(n_images)]
    features = np.stack([prototypes[pair] for pair in chosen]) + 0.2 * rng.normal(size=(n_images, 2, IMG_DIM))
    np.save(tmp_path / f"{name}_ims.npy", features.astype(np.float32))
    captions = [VOCAB.encode([CONCEPTS[c] for c in rng.permutation(pair)]) for pair in chosen for _ in range(per_image)]
    return CaptionPairs(PrecompFeatures(tmp_path / f"{name}_ims.npy"), captions,
                        image_index_for_captions(n_images, len(captions), source=name))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    train_pairs, dev_pairs = concept_pairs(tmp_path, "train", 30, 0), concept_pairs(tmp_path, "dev", 10, 1, per_image=5)
    train(ModelConfig(img_dim=IMG_DIM, word_dim=8, embed_size=8), TrainConfig(
        learning_rate=5e-3, num_epochs=EPOCHS, batch_size=10, workers=0, log_step=1, device="cpu"),
        len(VOCAB), train_pairs, dev_pairs, tmp_path / "run")
    return tmp_path, dev_pairs


@pytest.mark.slow
def test_report_of_a_tiny_trained_model(trained, tmp_path):
    run_dir, dev_pairs = trained
    model = load_model(run_dir / "run" / BEST_CHECKPOINT).model
    per_image_results, ranks = evaluate_models([model], dev_pairs, EvalConfig(), torch.device("cpu"))
    save_results(per_image_results, ranks, tmp_path / "eval.json")
    features, _ = dev_pairs.regions.read([0])
    record = RegionRecord("dev0", features[0], np.array([[0, 0, 30, 30], [20, 10, 60, 50]], np.float32),
                          np.ones(2, np.int64), np.ones(2, np.float32), np.zeros(2, np.int64),
                          np.zeros(2, np.float32), (64, 64))
    picture = draw_attention(explain_pair(model, VOCAB, record, " ".join(VOCAB.decode(dev_pairs.captions[0]))),
                             np.zeros((64, 64, 3), np.uint8), tmp_path / "example.png")

    report = write_report(tmp_path / "out", {"ours (tiny)": tmp_path / "eval.json"}, train_log=run_dir / "run",
                          attention_examples=[picture], paper_figures="f30k")

    text = report.read_text()
    ours = f"| ours (tiny) | {per_image_results['i2t']['r1']:.1f} | {per_image_results['i2t']['r5']:.1f} |"
    assert ours in text and "| SCAN t-i AVG (paper) | 61.8 | 87.5 | 93.7 | 45.8 | 74.4 | 83.0 |" in text
    assert "![training curves](training_curves.png)" in text and "attention/example.png" in text
    with Image.open(tmp_path / "out" / "training_curves.png") as curves:
        assert curves.format == "PNG" and curves.size == (900, 350)
    assert (tmp_path / "out" / "attention" / "example.png").read_bytes() == picture.read_bytes()
    logs = read_train_log(run_dir / "run")
    assert [log.epoch for log in logs] == list(range(1, EPOCHS + 1))
    assert all(log.loss is not None and log.loss > 0 for log in logs)
    summary = json.loads((run_dir / "run" / "summary.json").read_text())
    assert [log.rsum for log in logs] == [entry["rsum"] for entry in summary["history"]]
    assert f"| 1 | {logs[0].loss:.4f} | {logs[0].rsum:.1f} |" in text


def test_paper_figures_are_the_published_ones():
    assert PAPER_RESULTS["f30k"]["SCAN ensemble (paper)"]["t2i"] == {"r1": 48.6, "r5": 77.7, "r10": 85.2}
    assert PAPER_RESULTS["coco5k"]["SCAN ensemble (paper)"]["i2t"] == {"r1": 50.4, "r5": 82.2, "r10": 90.0}


def test_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"i2t": {"r1": 1.0}}))
    with pytest.raises(InputError, match=r"eval.json \(i2t\)"):
        write_report(tmp_path / "out", {"x": tmp_path / "eval.json"})
    with pytest.raises(InputError, match="summary.json"):
        read_train_log(tmp_path)
