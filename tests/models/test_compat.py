"""Reference SCAN files: checkpoints (safely), precomp features and captions, the evaluate command."""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch

from models.compat import (CHECKPOINT_FORMAT, load_model, load_precomp_split, model_config_from_scan_opt,
                           read_scan_captions)
from models.__main__ import main as models_main
from models.config import EvalConfig, ModelConfig
from models.data import first_images
from models.encoders import SCANModel
from models.evaluate import evaluate_models
from pipeline.captions import Vocabulary
from pipeline.errors import InputError

REPO = Path(__file__).resolve().parents[2]
CONFIG = ModelConfig(img_dim=2048, word_dim=8, embed_size=16, precomp_enc_type="basic")


@pytest.fixture(scope="module")
def vocab(shared_data) -> Vocabulary:
    return Vocabulary.from_scan_json(shared_data / "scan_f30k" / "f30k_precomp_vocab.json")


@pytest.fixture()
def precomp_dir(tmp_path, shared_data) -> Path:
    """SCAN's precomp layout: test_ims.npy (4, 36, 2048) and 20 real f30k caption lines."""
    lines = (shared_data / "f30k_mini" / "test_caps.txt").read_text().splitlines()[:20]
    (tmp_path / "test_caps.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "test_ims.npy", rng.uniform(0, 2, size=(4, 36, 2048)).astype(np.float32))
    return tmp_path


def reference_opt(config: ModelConfig, vocab_size: int | None) -> argparse.Namespace:
    """The Namespace the reference train.py pickles: its flags, plus vocab_size set at run time."""
    flags = {spec.name: getattr(config, spec.name) for spec in fields(ModelConfig)}
    flags.update(data_path="/data", data_name="f30k_precomp", margin=0.2, num_epochs=30, batch_size=128,
                 grad_clip=2.0, learning_rate=2e-4, lr_update=15, workers=10, log_step=10, val_step=500,
                 logger_name="runs/log", model_name="runs/model", resume="", max_violation=True,
                 vocab_path="./vocab/")
    if vocab_size is not None:
        flags["vocab_size"] = vocab_size
    return argparse.Namespace(**flags)


def save_reference_checkpoint(path: Path, model: SCANModel, opt: argparse.Namespace, *, zipfile: bool = True) -> Path:
    torch.save({"epoch": 12, "model": [model.img_enc.state_dict(), model.txt_enc.state_dict()],
                "best_rsum": 412.5, "opt": opt, "Eiters": 27000}, path, _use_new_zipfile_serialization=zipfile)
    return path


@pytest.mark.parametrize("encoder, zipfile", [("basic", True), ("weight_norm", False)])
def test_reference_checkpoint_scores_like_its_model(tmp_path, precomp_dir, vocab, encoder, zipfile):
    config = ModelConfig(img_dim=2048, word_dim=8, embed_size=16, precomp_enc_type=encoder,
                         cross_attn="i2t", agg_func="LogSumExp", lambda_softmax=4.0)
    torch.manual_seed(0)
    original = SCANModel(len(vocab), config).eval()
    path = save_reference_checkpoint(tmp_path / "model_best.pth.tar", original, reference_opt(config, len(vocab)),
                                     zipfile=zipfile)
    loaded = load_model(path)
    assert loaded.origin == "scan" and loaded.model.config == config and loaded.vocab_size == len(vocab)
    pairs, eval_config = load_precomp_split(precomp_dir, "test", vocab), EvalConfig(batch_size=8)
    assert evaluate_models([loaded.model], pairs, eval_config, torch.device("cpu"))[0] == \
        evaluate_models([original], pairs, eval_config, torch.device("cpu"))[0]
    for name, value in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


class MarkerWriter:
    """A pickle that, if unpickled by a permissive loader, creates ``marker`` (i.e. runs code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "plain_pickle"])
def test_malicious_checkpoint_is_refused_without_running_code(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "model_best.pth.tar"
    payload = {"model": [{}, {}], "opt": MarkerWriter(marker)}
    if writer == "plain_pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=writer == "torch_zip")
    with pytest.raises(InputError, match="model_best.pth.tar: refused or unreadable"):
        load_model(path)
    assert not marker.exists()


def test_bad_reference_files_are_named(tmp_path, vocab):
    torch.manual_seed(0)
    model = SCANModel(len(vocab), CONFIG)
    bad_flag = reference_opt(CONFIG, len(vocab))
    bad_flag.cross_attn = "sideways"
    path = save_reference_checkpoint(tmp_path / "bad.pth.tar", model, bad_flag)
    with pytest.raises(InputError, match=r"bad.pth.tar \(opt\): .*cross_attn"):
        load_model(path)
    wrong_size = save_reference_checkpoint(tmp_path / "size.pth.tar", model, reference_opt(CONFIG, 50))
    with pytest.raises(InputError, match=r"size.pth.tar \(model\): weights do not fit"):
        load_model(wrong_size)
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="other.pth: not a SCAN checkpoint"):
        load_model(tmp_path / "other.pth")


def test_vocab_size_falls_back_to_the_embedding(tmp_path):
    model = SCANModel(30, CONFIG)
    path = save_reference_checkpoint(tmp_path / "m.pth.tar", model, reference_opt(CONFIG, None))
    assert load_model(path).vocab_size == 30
    assert model_config_from_scan_opt({"embed_size": 16, "unknown": 1}, source="x").embed_size == 16


def test_precomp_split_pairs_real_captions_with_images(precomp_dir, vocab):
    pairs = load_precomp_split(precomp_dir, "test", vocab)
    assert len(pairs) == 20 and len(pairs.regions) == 4
    assert pairs.image_index.tolist() == [i // 5 for i in range(20)]
    first = pairs.captions[0]
    assert first[0] == vocab("<start>") and first[-1] == vocab("<end>")
    assert vocab.decode(first[1:4]) == ["the", "man", "with"]
    with (precomp_dir / "test_caps.txt").open("a") as extra:
        extra.write("one caption too many .\n")
    with pytest.raises(InputError, match="test_caps.txt.*21 captions for 4 images"):
        load_precomp_split(precomp_dir, "test", vocab)
    (precomp_dir / "blank_caps.txt").write_text("a dog .\n\n")
    with pytest.raises(InputError, match=r"blank_caps.txt \(line 2\): empty caption"):
        read_scan_captions(precomp_dir / "blank_caps.txt", vocab)


@pytest.mark.slow
def test_evaluate_command_on_an_ensemble(tmp_path, precomp_dir, vocab, shared_data):
    torch.manual_seed(0)
    reference, ours = SCANModel(len(vocab), CONFIG).eval(), SCANModel(len(vocab), CONFIG).eval()
    save_reference_checkpoint(tmp_path / "model_best.pth.tar", reference, reference_opt(CONFIG, len(vocab)))
    torch.save({"format": CHECKPOINT_FORMAT, "model": ours.state_dict(), "model_config": asdict(CONFIG),
                "vocab_size": len(vocab)}, tmp_path / "ours.pth")
    vocab_path = shared_data / "scan_f30k" / "f30k_precomp_vocab.json"
    command = [sys.executable, "-m", "models", "evaluate", "--checkpoint", str(tmp_path / "model_best.pth.tar"),
               "--checkpoint", str(tmp_path / "ours.pth"), "--data", str(precomp_dir), "--vocab", str(vocab_path),
               "--split", "test", "--batch-size", "3", "--json", str(tmp_path / "out" / "eval.json")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected, ranks = evaluate_models([reference, ours], load_precomp_split(precomp_dir, "test", vocab),
                                      EvalConfig(batch_size=3), torch.device("cpu"))
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written.pop("protocol")["description"] == "test: 4 images / 20 captions" and written == expected
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "eval_t2i_ranks.npy"), ranks["t2i"])
    assert "rsum" in done.stdout and "R@1" in done.stdout
    small = tmp_path / "small_vocab.json"
    Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]).save_scan_json(small)
    command[command.index(str(vocab_path))] = str(small)
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "small_vocab.json" in refused.stderr and "trained with" in refused.stderr


@pytest.mark.slow
def test_evaluate_command_scores_dev_as_the_reference(tmp_path, vocab, shared_data, capsys):
    """Flickr30K's precomp dev size, 1014 images / 5070 captions: the reference scores the first 5000.
    One-word captions and one region per image keep the 1000 x 5000 scoring cheap."""
    words = ("dog", "man", "girl", "car", "tree", "ball", "water")
    (tmp_path / "dev_caps.txt").write_text("".join(f"{words[i % 7]}\n" for i in range(5070)))
    np.save(tmp_path / "dev_ims.npy", np.random.default_rng(0).normal(size=(1014, 1, 4)).astype(np.float32))
    config = ModelConfig(img_dim=4, word_dim=4, embed_size=4)
    torch.manual_seed(0)
    model = SCANModel(len(vocab), config).eval()
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": asdict(config),
                "vocab_size": len(vocab)}, tmp_path / "ours.pth")
    command = ["evaluate", "--checkpoint", str(tmp_path / "ours.pth"), "--data", str(tmp_path), "--vocab",
               str(shared_data / "scan_f30k" / "f30k_precomp_vocab.json"), "--split", "dev", "--batch-size", "1024",
               "--no-fused-scores"]
    assert models_main([*command, "--json", str(tmp_path / "reference.json")]) == 0
    assert "dev, reference protocol: the first 1000 images / 5000 captions of 1014 / 5070" in capsys.readouterr().out
    assert models_main([*command, "--no-reference-dev", "--json", str(tmp_path / "full.json")]) == 0
    assert "dev, full split: 1014 images / 5070 captions" in capsys.readouterr().out
    reference, full = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("reference", "full"))
    assert (reference["protocol"]["images"], full["protocol"]["captions"]) == (1000, 5070)
    head = first_images(load_precomp_split(tmp_path, "dev", vocab), 1000)
    expected, _ = evaluate_models([model], head, EvalConfig(batch_size=1024, fused_scores=False), torch.device("cpu"))
    assert {k: reference[k] for k in expected} == expected
    assert len(np.load(tmp_path / "reference_t2i_ranks.npy")) == 5000
    assert len(np.load(tmp_path / "full_t2i_ranks.npy")) == 5070
