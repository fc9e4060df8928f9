"""When the data changes, the workflow notices (issue 20): each case through the real Luigi workflow.

Generated data: the demo's drawn images and captions laid out as a user's `custom` dataset, with the
small demo detector written as a published weights file. Nothing already extracted is extracted again
(checked by shard bytes and inodes).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import luigi
import pyarrow.parquet as pq
import pytest

from pipeline.workspace import MARKER
from tests.reliability.artifacts import machine_paths_in
from tests.workflows.conftest import REPO_ROOT, as_flags, luigi_command, params_of
from tests.workflows.custom_data import SourceImage, detector_weights, drawn_images, task_params, write_custom
from workflows import EvaluateSCAN, FeatureStore, PrepareCaptions, TrainModel, TrainSCAN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[SourceImage], Path]:
    folder = tmp_path_factory.mktemp("drawn")
    return drawn_images(folder / "demo"), detector_weights(folder / "weights.pkl")


def _task(task_cls: type, params: dict) -> luigi.Task:
    return task_cls(**params_of(task_cls, params))


def _build(task: luigi.Task) -> luigi.execution_summary.LuigiRunResult:
    return luigi.build([task], local_scheduler=True, detailed_summary=True)


def _shard_digests(store: Path) -> dict[str, tuple[str, int]]:
    """Shard name -> (sha256 of its bytes, inode)."""
    return {path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_ino)
            for path in sorted((store / "shards").glob("shard-*.h5"))}


def _families(ran_tasks: list[str]) -> list[str]:
    return [task_id.split("_")[0] for task_id in ran_tasks]


def test_1_changed_captions_rerun_caption_tasks(drawn, tmp_path, workspace, ran_tasks) -> None:
    images, weights = drawn
    write_custom(tmp_path / "a", images)
    params = task_params(tmp_path / "a", weights)
    assert _build(_task(PrepareCaptions, params)).scheduling_succeeded
    before = _task(PrepareCaptions, params).artifact_dir
    edited = [SourceImage(images[0].file, images[0].split, ("A completely new caption .",) * 5), *images[1:]]
    write_custom(tmp_path / "a", edited)
    luigi.task_register.Register.clear_instance_cache()
    ran_tasks.clear()
    assert _build(_task(PrepareCaptions, params)).scheduling_succeeded
    assert _families(ran_tasks) == ["BuildVocab", "PrepareCaptions"]
    assert _task(PrepareCaptions, params).artifact_dir != before
    raws = pq.read_table(_task(PrepareCaptions, params).artifact_dir / "captions.parquet").column("raw").to_pylist()
    assert "A completely new caption ." in raws


def test_1_grown_dataset_extracts_only_the_new_images(drawn, tmp_path, workspace, ran_tasks) -> None:
    images, weights = drawn
    later = [image for image in images if image.split == "train"][-4:]
    write_custom(tmp_path / "data", [image for image in images if image not in later])
    params = task_params(tmp_path / "data", weights)
    assert _build(_task(FeatureStore, params)).scheduling_succeeded
    first = _task(FeatureStore, params).artifact_dir / "store"
    shards_before = _shard_digests(first)
    write_custom(tmp_path / "data", images)  # 4 more train images (and their captions)
    luigi.task_register.Register.clear_instance_cache()
    ran_tasks.clear()
    assert _build(_task(FeatureStore, params)).scheduling_succeeded
    grown = _task(FeatureStore, params).artifact_dir / "store"
    assert grown != first and set(_families(ran_tasks)) == {"FeatureStore", "ExtractFeatures"}
    shards_after = _shard_digests(grown)
    assert {name: shards_after[name] for name in shards_before} == shards_before  # adopted: same bytes, same inode
    assert len(shards_after) == len(shards_before) + 1
    manifest = pq.read_table(grown / "manifest.parquet").column("image_id").to_pylist()
    assert sorted(manifest) == sorted(image.file.stem for image in images)
    assert _shard_digests(first) == shards_before  # the old version's store is untouched


def test_2_extracting_another_folder_into_a_store_adds_to_its_manifest(drawn, tmp_path) -> None:
    images, weights = drawn
    first, second = write_custom(tmp_path / "one", images[:5]), tmp_path / "two"
    second.mkdir()
    for image in images[5:7]:
        (second / image.file.name).write_bytes(image.file.read_bytes())
    store = tmp_path / "store"
    base = [sys.executable, "-m", "extractors", "extract", "--store", str(store), "--backbone", "R18-C4-demo",
            "--weights", str(weights), "--min-boxes", "1", "--max-boxes", "4", "--rpn-post-nms-topk", "8",
            "--workers", "0", "--no-progress", "--shard-size", "4"]
    for folder in (first, second):
        done = subprocess.run([*base, "--images", str(folder)], cwd=REPO_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert len(pq.read_table(store / "manifest.parquet")) == 7  # the union: adding never removes
    pruned = subprocess.run([*base, "--images", str(second), "--prune"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert pruned.returncode == 0 and "0 extracted, 2 skipped" in pruned.stdout
    assert sorted(pq.read_table(store / "manifest.parquet").column("image_id").to_pylist()) == sorted(
        image.file.stem for image in images[5:7])


def test_3_unreadable_images_are_left_out_of_training_and_named(drawn, tmp_path, workspace) -> None:
    images, weights = drawn
    folder = write_custom(tmp_path / "data", images)
    train_image = next(image for image in images if image.split == "train")
    test_image = next(image for image in images if image.split == "test")
    for image in (train_image, test_image):
        (folder / image.file.name).write_bytes(b"<html>not an image</html>")
    params = task_params(tmp_path / "data", weights)
    assert _build(_task(TrainSCAN, params)).scheduling_succeeded
    skipped = json.loads((_task(TrainModel, params).artifact_dir / "images_without_features.json").read_text())
    assert skipped == {"train": [train_image.file.stem], "dev": []}
    results = json.loads((_task(EvaluateSCAN, params).artifact_dir / "results.json").read_text())
    assert results["images_without_features"] == [test_image.file.stem]
    report = (_task(TrainSCAN, params).artifact_dir / "report.md").read_text()
    assert "1 evaluation images could not be read" in report and test_image.file.stem in report


def test_4_a_damaged_store_is_repaired_by_running_again(drawn, tmp_path, workspace, ran_tasks) -> None:
    images, weights = drawn
    write_custom(tmp_path / "data", images)
    params = task_params(tmp_path / "data", weights)
    assert _build(_task(FeatureStore, params)).scheduling_succeeded
    store = _task(FeatureStore, params).artifact_dir / "store"
    before = _shard_digests(store)
    shard = store / "shards" / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    luigi.task_register.Register.clear_instance_cache()
    ran_tasks.clear()
    assert _build(_task(FeatureStore, params)).scheduling_succeeded
    after = _shard_digests(store)
    assert {name: after[name] for name in before if name != "shard-00001.h5"} == {
        name: digest for name, digest in before.items() if name != "shard-00001.h5"}
    assert "shard-00001.h5" not in after and len(after) == len(before)  # its images went into a new shard
    (store / "manifest.parquet").unlink()
    luigi.task_register.Register.clear_instance_cache()
    ran_tasks.clear()
    assert _build(_task(FeatureStore, params)).scheduling_succeeded
    assert _families(ran_tasks) == ["FeatureStore"] and _shard_digests(store) == after  # nothing re-extracted
    assert (store / "manifest.parquet").is_file()


def test_5_a_killed_workflow_takes_its_trainer_along_and_runs_are_locked(drawn, tmp_path) -> None:
    images, weights = drawn
    write_custom(tmp_path / "data", images)
    params = {**task_params(tmp_path / "data", weights), "num_epochs": 40}
    workspace = tmp_path / "workspace"
    command, env = luigi_command(["TrainModel", *as_flags(params), "--local-scheduler"], workspace)
    luigi_process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    trainer = _wait_for_trainer(luigi_process)
    os.kill(luigi_process.pid, signal.SIGKILL)  # the luigi process only, as `kill -9` of it does
    luigi_process.wait()
    assert _gone_within(trainer, 30), "the trainer outlived the killed workflow"

    run_dir = next(workspace.glob("TrainModel/custom-*"))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid holder'); f.flush(); time.sleep(3600)",
                               str(run_dir / ".lock")])
    try:
        time.sleep(1)
        again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
    assert again.returncode == 30
    assert "training is already running here" in (run_dir / "train.log").read_text()


def _wait_for_trainer(parent: subprocess.Popen, timeout: float = 300) -> int:
    """The pid of the `workflows.train_entry` child of `parent`, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert parent.poll() is None, "the workflow ended before training started"
        for line in subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout.splitlines():
            pid, ppid, args = line.split(None, 2)
            if ppid == str(parent.pid) and "workflows.train_entry" in args:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError("no trainer started")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return True  # exited, waiting to be reaped by init
        time.sleep(0.2)
    return False


def test_6_weights_are_identified_by_content_not_path(drawn, tmp_path, workspace, monkeypatch) -> None:
    images, weights = drawn
    write_custom(tmp_path / "data", images)
    absolute = task_params(tmp_path / "data", weights)
    assert _build(_task(FeatureStore, absolute)).scheduling_succeeded
    monkeypatch.chdir(weights.parent)
    relative = {**absolute, "extractor_weights": weights.name}
    assert _task(FeatureStore, relative).artifact_dir == _task(FeatureStore, absolute).artifact_dir
    assert _task(FeatureStore, relative).complete()


def test_7_a_dataset_without_a_train_split_fails_before_any_extraction(drawn, tmp_path) -> None:
    images, weights = drawn
    write_custom(tmp_path / "data", [image for image in images if image.split != "train"])
    workspace = tmp_path / "workspace"
    command, env = luigi_command(["TrainSCAN", *as_flags(task_params(tmp_path / "data", weights)),
                                  "--local-scheduler"], workspace)
    started = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 20, done.stderr[-2000:]  # missing data, from any folder (no luigi.cfg there)
    assert "split 'train' has no images" in done.stderr and time.monotonic() - started < 120
    assert not list(workspace.glob("FeatureStore/*")) and not list(workspace.glob("BuildVocab/*"))


def test_8_a_rerun_prints_the_table_and_artifacts_hold_no_machine_paths(drawn, tmp_path) -> None:
    images, weights = drawn
    write_custom(tmp_path / "data", images)
    workspace = tmp_path / "workspace"
    command, env = luigi_command(["TrainSCAN", *as_flags(task_params(tmp_path / "data", weights)),
                                  "--local-scheduler"], workspace)
    runs = [subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr[-2000:]
    assert "rsum" in runs[1].stdout and "Did not run any tasks" in runs[1].stderr
    assert not list(workspace.glob(f"TrainModel/*/{MARKER}.tmp*"))
    found = machine_paths_in(workspace, tmp_path, REPO_ROOT)
    assert found == [".cache/file-hashes.sqlite"], "absolute paths in artifacts"  # the cache maps paths to digests
