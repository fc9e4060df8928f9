"""`scan-pipeline doctor`: a clean workspace passes; each kind of damage is found, named and exits 1."""
from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from doctor.__main__ import main
from models.config import HeadConfig
from models.head_training import HEAD_CHECKPOINT
from models.train import train
from pipeline.captions import Vocabulary
from pipeline.workspace import MARKER
from tests.models.test_train import MODEL, TRAIN, VOCAB_SIZE, precomp_pairs
from tests.reliability.workspace_builder import WORDS, build_workspace, save_checkpoint


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    return tmp_path / "ws", build_workspace(tmp_path / "ws")


def _problems(root: Path, capsys) -> dict:
    code = main(["doctor", str(root), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (1 if report["problems"] else 0)
    return report


def test_clean_workspace_passes(workspace, capsys) -> None:
    root, _ = workspace
    report = _problems(root, capsys)
    assert report["ok"] and report["problems"] == []
    assert report["checked"] == {"stores": 1, "checkpoints": 1, "vocabularies": 1, "captions": 1}
    assert main([str(root)]) == 0
    assert "OK: no problems found" in capsys.readouterr().out


def test_missing_workspace_exits_2(tmp_path, capsys) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "workspace folder not found" in capsys.readouterr().err


def test_nan_feature_in_a_shard_is_found(workspace, capsys) -> None:
    root, folders = workspace
    with h5py.File(folders["store"] / "store" / "shards" / "shard-00001.h5", "r+") as handle:
        handle["features"][0, 0, 0] = np.nan
    [finding] = _problems(root, capsys)["problems"]
    assert finding["check"] == "store" and "NaN or Inf" in finding["problem"] and "shard-00001.h5" in finding["path"]
    assert finding["fix"].startswith("delete this shard, then re-run the same extraction")


def test_truncated_shard_and_missing_manifest_are_found(workspace, capsys) -> None:
    root, folders = workspace
    shard = folders["store"] / "store" / "shards" / "shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[:300])
    problems = _problems(root, capsys)["problems"]
    assert any("truncated or corrupt" in p["problem"] and p["path"].endswith("shard-00000.h5") for p in problems)
    (folders["store"] / "store" / "manifest.parquet").unlink()
    assert any("manifest" in p["path"] and "missing" in p["problem"] for p in _problems(root, capsys)["problems"])


def test_checkpoint_that_runs_code_is_refused_and_reported(workspace, tmp_path, capsys) -> None:
    root, folders = workspace
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format": "scan-pipeline/1", "model": Exploit()}, folders["model"] / "model_best.pth")
    [finding] = _problems(root, capsys)["problems"]
    assert finding["check"] == "checkpoint" and "refused" in finding["problem"]
    assert not marker.exists()


def test_checkpoint_of_another_vocabulary_and_wrong_shapes(workspace, capsys) -> None:
    root, folders = workspace
    save_checkpoint(folders["model"] / "model_best.pth", vocab_size=50)
    [finding] = _problems(root, capsys)["problems"]
    assert "trained with 50 words" in finding["problem"] and f"has {4 + len(WORDS)}" in finding["problem"]
    payload = torch.load(folders["model"] / "model_best.pth", weights_only=True)
    payload["model"]["txt_enc.embed.weight"] = torch.zeros(3, 3)
    torch.save(payload, folders["model"] / "checkpoint.pth")
    problems = _problems(root, capsys)["problems"]
    assert any(p["path"].endswith("checkpoint.pth") and "do not fit" in p["problem"] for p in problems)


def test_truncated_checkpoint_and_leftover_temp_file(workspace, capsys) -> None:
    root, folders = workspace
    best = folders["model"] / "model_best.pth"
    best.write_bytes(best.read_bytes()[:100])
    (folders["model"] / ".checkpoint.pth.tmp").write_bytes(b"half")
    problems = _problems(root, capsys)["problems"]
    assert {p["check"] for p in problems} == {"checkpoint", "temp"}


def test_vocabulary_smaller_than_the_captions_ids(workspace, capsys) -> None:
    root, folders = workspace
    Vocabulary(("<pad>", "<start>", "<end>", "<unk>", "a")).save_scan_json(folders["vocab"] / "vocab.json")
    problems = _problems(root, capsys)["problems"]
    captions = [p for p in problems if p["check"] == "captions"]
    assert captions and "outside the vocabulary of 5 words" in captions[0]["problem"]
    assert any(p["check"] == "checkpoint" and "has 5" in p["problem"] for p in problems)


def test_broken_vocabulary_file(workspace, capsys) -> None:
    root, folders = workspace
    (folders["vocab"] / "vocab.json").write_text('{"word2idx": {"<pad>": 0, "a": 2}}')
    problems = _problems(root, capsys)["problems"]
    assert any(p["check"] == "vocab" and "0..n-1" in p["problem"] for p in problems)
    assert any(p["check"] == "captions" and "no vocabulary found" in p["problem"] for p in problems)


def test_captions_file_that_is_not_parquet(workspace, capsys) -> None:
    root, folders = workspace
    (folders["captions"] / "captions.parquet").write_bytes(pickle.dumps([1, 2, 3]))
    [finding] = _problems(root, capsys)["problems"]
    assert finding["check"] == "captions" and "not a readable captions Parquet" in finding["problem"]


def test_interrupted_task_folder_is_reported(workspace, capsys) -> None:
    root, folders = workspace
    (folders["model"] / "_COMPLETE.json").unlink()
    [finding] = _problems(root, capsys)["problems"]
    assert finding["check"] == "task" and "unfinished TrainModel task" in finding["problem"]
    assert "re-run the workflow" in finding["fix"]


def test_the_head_stage_checkpoint_of_a_real_training_is_clean_and_its_damage_found(tmp_path, capsys) -> None:
    """Training with the default head stage leaves head_checkpoint.pth (the head alone, resumable) beside the
    model checkpoints; the doctor reads it as that, not as a model (a container smoke run found it reported)."""
    root = tmp_path / "ws"
    folder = root / "TrainModel" / "demo-0123456789"
    pairs = precomp_pairs(tmp_path, "train", 60, 0, 1), precomp_pairs(tmp_path, "dev", 20, 1)
    train(MODEL, replace(TRAIN, num_epochs=1), VOCAB_SIZE, *pairs, folder, head_config=HeadConfig(head_epochs=1))
    (folder / MARKER).write_text("{}")
    report = _problems(root, capsys)
    assert (folder / HEAD_CHECKPOINT).is_file() and report["checked"]["checkpoints"] == 3
    assert report["problems"] == []
    torch.save({"model": {}, "epoch": 1}, folder / HEAD_CHECKPOINT)
    [problem] = _problems(root, capsys)["problems"]
    assert problem["path"] == str(folder / HEAD_CHECKPOINT) and "not a head-stage checkpoint" in problem["problem"]
