"""Two real gloo processes under torchrun train to the same weights as one process."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import EvalConfig
from models.train import LAST_CHECKPOINT, run_train_job, write_train_job
from pipeline.captions import SPECIALS, Vocabulary
from tests.models.test_train import CONCEPTS, MODEL, TRAIN, synthetic_split

REPO = Path(__file__).resolve().parents[2]


def write_precomp(folder: Path, split: str, n_images: int, seed: int, per_image: int) -> None:
    features, captions = synthetic_split(n_images, seed, per_image)
    np.save(folder / f"{split}_ims.npy", features)
    (folder / f"{split}_caps.txt").write_text("".join(" ".join(words) + " .\n" for words in captions))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    data = tmp_path / "precomp"
    data.mkdir()
    write_precomp(data, "train", 40, seed=0, per_image=1)
    write_precomp(data, "dev", 4, seed=1, per_image=5)
    Vocabulary([*SPECIALS, ".", *CONCEPTS]).save_scan_json(data / "vocab.json")
    config = replace(TRAIN, batch_size=20, num_epochs=2, warmup_epochs=1)   # sum, then hardest negatives
    jobs = {name: write_train_job(tmp_path / f"{name}.json", model_config=MODEL, train_config=config, data_dir=data,
                                  vocab=data / "vocab.json",
                                  out_dir=tmp_path / name, eval_config=EvalConfig(split="dev"))
            for name in ("one", "two")}
    run_train_job(jobs["one"])
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "models", "train", "--config", str(jobs["two"])],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    one = torch.load(tmp_path / "one" / LAST_CHECKPOINT, weights_only=True)
    two = torch.load(tmp_path / "two" / LAST_CHECKPOINT, weights_only=True)
    assert one["step"] == two["step"] == 4 and (one["world_size"], two["world_size"]) == (1, 2)
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
