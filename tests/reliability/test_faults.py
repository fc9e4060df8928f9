"""Crashes and resource faults: kill -9 at random points, a full disk, two workflow runs at once.

Every killed run is resumed by the real code and must end byte-identical (features) or equal
(model state) to an uninterrupted run, with no temp file left behind.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import InProcessRunner, RunConfig, extract_dataset
from extractors.loader import images_in_directory
from doctor import diagnose
from models.config import EvalConfig, ModelConfig, TrainConfig
from models.train import BEST_CHECKPOINT, LAST_CHECKPOINT, run_train_job, write_train_job
from pipeline.atomic import temp_path_for
from pipeline.captions import Vocabulary
from pipeline.store import ShardWriter, StoreConfig, StoreInfo, commit_manifest, init_store, verify_store
from tests.reliability.bad_files import encoded, photo, write_files
from tests.reliability.artifacts import leftover_temp_files, machine_paths_in, store_rows
from tests.reliability.workspace_builder import region_record

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTRACTOR_FLAGS = ["--backbone", "R18-C4-demo", "--device", "cpu", "--batch-size", "1", "--min-boxes", "2",
                   "--max-boxes", "4", "--rpn-pre-nms-topk", "100", "--rpn-post-nms-topk", "4", "--workers", "0",
                   "--shard-size", "2", "--no-progress", "--torch-threads", "1"]
CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu", batch_size=1, min_boxes=2, max_boxes=4,
                                    rpn_pre_nms_topk=100, rpn_post_nms_topk=4)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


# Bit-equal results need the same thread count in-process as in the killed subprocess (1).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], delay: float, timeout: float = 120) -> None:
    """SIGKILL `process` `delay` seconds after `ready()` first holds; it must still be running then."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"ended before the kill point: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.002)
    time.sleep(delay)
    assert process.poll() is None, "finished before the kill: pick an earlier kill point"
    process.send_signal(signal.SIGKILL)
    process.wait()


# ---------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def detector():
    return build_detector(CONFIG)


@pytest.fixture(scope="module")
def extraction(tmp_path_factory, detector) -> tuple[Path, Path]:
    """6 images (3 shards of 2) and the store an uninterrupted run makes of them."""
    folder = tmp_path_factory.mktemp("extraction")
    write_files(folder / "images", {f"photo{n}.jpg": encoded(photo(n, (160, 120)), "JPEG") for n in range(6)})
    runner = InProcessRunner(CONFIG, RunConfig(num_workers=0), detector=detector, progress=False)
    extract_dataset(images_in_directory(folder / "images"), folder / "reference", CONFIG,
                    store=StoreConfig(shard_size=2), run=RunConfig(num_workers=0), runner=runner, progress=False)
    return folder / "images", folder / "reference"


def _rows(store: Path) -> dict[str, bytes]:
    return store_rows(store, ("features", "boxes", "num_boxes", "object_ids", "attr_ids", "object_conf"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 5])  # kill after 0 and 2 published shards (of 3)
def test_extraction_killed_at_a_random_point_resumes_to_an_identical_store(tmp_path, extraction,
                                                                           detector, seed) -> None:
    images, reference = extraction
    rng = random.Random(seed)
    published_before_kill, delay = rng.randrange(3), rng.uniform(0.0, 0.05)
    store = tmp_path / "store"
    command = [sys.executable, "-m", "extractors", "extract", "--images", str(images), "--store", str(store),
               *EXTRACTOR_FLAGS]

    def ready() -> bool:
        names = os.listdir(store / "shards") if (store / "shards").is_dir() else []
        return sum(name.endswith(".h5") for name in names) >= published_before_kill and any(".tmp-" in n for n in names)

    process = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when(process, ready, delay)
    assert not (store / "manifest.parquet").exists()
    runner = InProcessRunner(CONFIG, RunConfig(num_workers=0), detector=detector, progress=False)
    summary = extract_dataset(images_in_directory(images), store, CONFIG, store=StoreConfig(shard_size=2),
                              run=RunConfig(num_workers=0), runner=runner, progress=False)  # the resume, in-process
    assert summary.skipped == 2 * published_before_kill and summary.failed == 0
    assert _rows(store) == _rows(reference)
    assert pq.read_table(store / "manifest.parquet").equals(pq.read_table(reference / "manifest.parquet"))
    assert leftover_temp_files(store) == [] and verify_store(store) == []


# ---------------------------------------------------------------- training


WORDS = [f"w{i}" for i in range(12)]


def _precomp(folder: Path, split: str, n_images: int, per_image: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(0).normal(size=(len(WORDS), 8))
    pairs = [rng.choice(len(WORDS), 2, replace=False) for _ in range(n_images)]
    features = np.stack([prototypes[pair] + 0.3 * rng.normal(size=(2, 8)) for pair in pairs]).astype(np.float32)
    np.save(folder / f"{split}_ims.npy", features)
    lines = [" ".join(WORDS[i] for i in rng.permutation(pair)) for pair in pairs for _ in range(per_image)]
    (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> tuple[Path, Callable[[Path], Path], Path]:
    """Precomp data, a job writer, and the output of an uninterrupted 4-epoch run."""
    folder = tmp_path_factory.mktemp("training")
    data = folder / "data"
    data.mkdir()
    _precomp(data, "train", 400, 1, seed=1)  # 40 steps an epoch: long enough to be killed mid-run
    _precomp(data, "dev", 6, 5, seed=2)
    Vocabulary(("<pad>", "<start>", "<end>", "<unk>", *WORDS)).save_scan_json(data / "vocab.json")

    def job(out_dir: Path) -> Path:
        return write_train_job(out_dir.parent / f"{out_dir.name}.json", data_dir=data, vocab=data / "vocab.json",
                               out_dir=out_dir, model_config=ModelConfig(img_dim=8, word_dim=8, embed_size=16),
                               train_config=TrainConfig(learning_rate=5e-3, num_epochs=4, lr_update=2, batch_size=10,
                                                        workers=0, seed=5, device="cpu", warmup_epochs=1),
                               eval_config=EvalConfig(split="dev", batch_size=16))

    run_train_job(job(folder / "reference"))
    return data, job, folder / "reference"


def _same_training_state(left: Path, right: Path) -> None:
    a, b = (torch.load(path, weights_only=True) for path in (left, right))
    assert ((a["epoch"], a["step"], a["best_epoch"], a["history"])
            == (b["epoch"], b["step"], b["best_epoch"], b["history"]))
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)


def _epochs_done(out_dir: Path) -> int:
    try:
        return json.loads((out_dir / "summary.json").read_text())["epochs"]
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7, 6])  # kill after 1, 2 finished epochs
def test_training_killed_at_a_random_point_resumes_to_the_same_model(tmp_path, training, seed) -> None:
    _, job, reference = training
    rng = random.Random(seed)
    epochs_before_kill, delay = rng.randrange(3), rng.uniform(0.0, 0.05)
    out_dir = tmp_path / "run"
    path = job(out_dir)
    process = subprocess.Popen([sys.executable, "-m", "models", "train", "--config", str(path)], cwd=REPO_ROOT,
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when(process, lambda: (out_dir / "tensorboard").is_dir() and _epochs_done(out_dir) >= epochs_before_kill,
               delay)
    assert _epochs_done(out_dir) < 4
    run_train_job(path)
    _same_training_state(out_dir / LAST_CHECKPOINT, reference / LAST_CHECKPOINT)
    _same_training_state(out_dir / BEST_CHECKPOINT, reference / BEST_CHECKPOINT)
    assert leftover_temp_files(out_dir) == []


class _Crash(BaseException):
    """Stands in for a power cut: nothing after it runs, no except-clause catches it."""


def test_crash_between_checkpoint_and_best_model_keeps_the_best_model(tmp_path, training, monkeypatch) -> None:
    import models.train as training_module
    _, job, reference = training
    out_dir = tmp_path / "run"
    path = job(out_dir)
    real_save = training_module._save_checkpoint
    reference_best = torch.load(reference / BEST_CHECKPOINT, weights_only=True)["epoch"]

    def crash_on_last_best(payload, target):
        if target.name == BEST_CHECKPOINT and payload["epoch"] == reference_best:
            temp_path_for(target).write_bytes(b"half a checkpoint")
            raise _Crash()
        real_save(payload, target)

    monkeypatch.setattr(training_module, "_save_checkpoint", crash_on_last_best)
    with pytest.raises(_Crash):
        run_train_job(path)
    monkeypatch.setattr(training_module, "_save_checkpoint", real_save)
    run_train_job(path)
    assert (out_dir / BEST_CHECKPOINT).is_file(), "model_best.pth was never written"
    _same_training_state(out_dir / BEST_CHECKPOINT, reference / BEST_CHECKPOINT)
    assert leftover_temp_files(out_dir) == []


# ---------------------------------------------------------------- full disk


FULL_DISK_SCRIPT = r"""
import resource, signal, sys
import numpy as np
from pipeline.store import ShardWriter
from tests.reliability.workspace_builder import region_record
store = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
rng = np.random.default_rng(0)
try:
    with ShardWriter.for_store(store, 1) as writer:
        for n in range(40):
            writer.append(region_record(f"big{n}", rng, k=4, d=512))
except OSError as error:
    print("shard write failed:", type(error).__name__, error)
else:
    print("shard write succeeded")
"""


def test_full_disk_during_a_shard_write_keeps_the_store_intact(tmp_path) -> None:
    store = tmp_path / "store"
    init_store(store, StoreInfo(feature_dim=512, max_boxes=4, feature_dtype="float32"))
    with ShardWriter.for_store(store, 0) as writer:
        writer.append(region_record("small", np.random.default_rng(1), k=2, d=512))
    commit_manifest(store)
    before = {name: (store / name).read_bytes() for name in ("shards/shard-00000.h5", "manifest.parquet", "store.json")}
    result = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(store)], cwd=REPO_ROOT, env=_env(),
                            capture_output=True, text=True, timeout=60)
    # The error reaches the caller; HDF5 may then crash the process at exit (SIGSEGV/SIGBUS) while closing
    # the broken file id, so the exit status is not checked here (reported as an open problem).
    assert "shard write failed: OSError" in result.stdout and "too large" in result.stdout.lower(), result.stdout
    assert {name: (store / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(store / "shards")) == ["shard-00000.h5"]
    assert verify_store(store) == []


# ---------------------------------------------------------------- two workflow runs at once


@pytest.mark.slow
def test_two_identical_workflow_runs_at_once_write_each_artifact_once(tmp_path) -> None:
    command = [sys.executable, "-m", "luigi", "--module", "workflows", "PrepareCaptions", "--dataset", "demo",
               "--local-scheduler", "--demo-train-images", "12", "--demo-val-images", "4", "--demo-test-images", "4"]
    env = {**_env(), "SCAN_WORKSPACE": str(tmp_path / "ws")}
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=180)[0] for process in processes]
    codes = sorted(process.returncode for process in processes)
    assert codes in ([0, 0], [0, 10]), outputs  # 10: luigi's "already running" exit code (luigi.cfg [retcode])
    for family in ("GenerateDemo", "BuildVocab", "PrepareCaptions"):
        runs = sum(output.count(f"running   {family}(") for output in outputs)
        assert runs == 1, (family, outputs)
    report = diagnose(tmp_path / "ws")
    assert report.findings == [] and report.checked["captions"] == 1
    assert leftover_temp_files(tmp_path / "ws") == []
    assert machine_paths_in(tmp_path / "ws", tmp_path) == []
    assert not [output for output in outputs if str(tmp_path) in output]  # nor in the logs
