"""The demo chain end to end at test size: through a real luigid, again (nothing to do), and changed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import h5py
import luigi
import numpy as np
import pytest
import torch

from tests.workflows.conftest import REPO_ROOT, TINY_DEMO, params_of, as_flags, luigi_command, run_luigi, running_luigid
from workflows import EvaluateSCAN, FeatureStore, GenerateDemo, TrainModel, TrainSCAN
from workflows.base import ArtifactTask
from models.store_pairs import RESULTS_FILE
from pipeline.workspace import MARKER

pytestmark = pytest.mark.slow


def all_upstream(task: luigi.Task) -> list[ArtifactTask]:
    """Every static dependency of `task`, itself included."""
    found, todo = {}, [task]
    while todo:
        current = todo.pop()
        if isinstance(current, ArtifactTask) and current.task_id not in found:
            found[current.task_id] = current
            todo += luigi.task.flatten(current.requires())
    return list(found.values())


@pytest.fixture(scope="module")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The tiny demo chain run once as a user would: `luigi` with 2 workers against a real luigid."""
    folder = tmp_path_factory.mktemp("demo-chain")
    with running_luigid(folder) as port:
        done = run_luigi(["TrainSCAN", *as_flags(TINY_DEMO), "--workers", "2",
                          "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)], folder / "workspace")
    assert done.returncode == 0, done.stderr[-3000:]
    yield folder / "workspace", done.stdout + done.stderr


def test_demo_chain_runs_through_luigid_and_prints_the_table(demo_workspace: tuple[Path, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    workspace, output = demo_workspace
    monkeypatch.setenv("SCAN_WORKSPACE", str(workspace))
    assert "R@1" in output and "t2i" in output and "rsum" in output
    families = {task.get_task_family() for task in all_upstream(TrainSCAN(**TINY_DEMO))}
    assert families == {"GenerateDemo", "BuildVocab", "PrepareCaptions", "FeatureStore", "TrainModel",
                        "EvaluateSCAN", "BuildSearchIndex", "Report", "TrainSCAN"}
    for task in all_upstream(TrainSCAN(**TINY_DEMO)):
        assert (task.artifact_dir / MARKER).is_file(), task
    store = FeatureStore(**params_of(FeatureStore, TINY_DEMO))
    assert sorted(path.name for path in (store.artifact_dir / "store" / "shards").iterdir()) == [
        "shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    results = json.loads(next(workspace.glob(f"EvaluateSCAN/demo-*/{RESULTS_FILE}")).read_text())
    assert set(results) >= {"i2t", "t2i", "rsum"}
    assert (TrainSCAN(**TINY_DEMO).requires().artifact_dir / "training_curves.png").stat().st_size > 1000


def test_second_run_schedules_nothing(demo_workspace: tuple[Path, str], monkeypatch: pytest.MonkeyPatch,
                                      ran_tasks: list[str]) -> None:
    monkeypatch.setenv("SCAN_WORKSPACE", str(demo_workspace[0]))
    assert luigi.build([TrainSCAN(**TINY_DEMO)], local_scheduler=True)
    assert ran_tasks == []


def test_upstream_change_reruns_exactly_the_dependent_tasks(demo_workspace: tuple[Path, str],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            ran_tasks: list[str]) -> None:
    monkeypatch.setenv("SCAN_WORKSPACE", str(demo_workspace[0]))
    before = {task.task_id: task.artifact_dir for task in all_upstream(TrainSCAN(**TINY_DEMO))}
    changed = TrainSCAN(**{**TINY_DEMO, "vocab_threshold": 3, "nproc": 2})  # nproc: 2 gloo processes via torchrun
    after = {task.task_id: task.artifact_dir for task in all_upstream(changed)}
    assert luigi.build([changed], local_scheduler=True)
    ran = {luigi.task_register.Register.get_task_cls(task_id.split("_")[0]).__name__ for task_id in ran_tasks}
    assert ran == {"BuildVocab", "PrepareCaptions", "TrainModel", "EvaluateSCAN", "BuildSearchIndex", "Report",
                   "TrainSCAN"}
    assert set(ran_tasks) == set(after) - set(before)
    for family in (GenerateDemo, FeatureStore):
        kept = [path for task_id, path in after.items() if task_id.startswith(family.__name__ + "_")]
        assert kept and kept[0] in before.values()
    assert all(path not in before.values() for task_id, path in after.items()
               if task_id.split("_")[0] in ran)
    model_dir = TrainModel(**{**TINY_DEMO, "vocab_threshold": 3}).artifact_dir
    assert (model_dir / MARKER).is_file() and "--nproc_per_node=2" in (model_dir / "train.log").read_text()


def _kill_when(command: list[str], env: dict[str, str], ready: Callable[[], bool], log: Path,
               timeout: float = 400) -> None:
    """Start the workflow as its own process group; SIGKILL the whole group once `ready()` holds."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, ("the workflow ended before the moment to kill it:\n"
                                            f"{log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, "timed out waiting for the moment to kill the workflow"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _shards(workspace: Path) -> list[Path]:
    return sorted(workspace.glob("FeatureStore/demo-*/store/shards/shard-*.h5"))


def test_killed_during_extraction_and_training_resumes_to_the_same_artifacts(
        demo_workspace: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = demo_workspace[0]
    workspace = tmp_path / "workspace"
    command, env = luigi_command(["TrainSCAN", *as_flags(TINY_DEMO), "--local-scheduler"], workspace)
    _kill_when(command, env, lambda: len(_shards(workspace)) >= 1, tmp_path / "first.log")
    assert not list(workspace.glob(f"FeatureStore/demo-*/{MARKER}"))
    # The rest of the shards on a Dask LocalCluster (the executor does not change any artifact path).
    dask_command = [*command, "--executor", "dask", "--dask-n-workers", "1"]
    _kill_when(dask_command, env, lambda: bool(list(workspace.glob("TrainModel/demo-*/checkpoint.pth"))),
               tmp_path / "second.log")
    assert not list(workspace.glob(f"TrainModel/demo-*/{MARKER}"))
    assert len(_shards(workspace)) == 3
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert finished.returncode == 0, finished.stderr[-3000:]

    for mine, theirs in zip(_shards(workspace), _shards(reference), strict=True):
        assert mine.relative_to(workspace) == theirs.relative_to(reference)
        with h5py.File(mine) as a, h5py.File(theirs) as b:
            assert np.array_equal(a["features"][()], b["features"][()])
    monkeypatch.setenv("SCAN_WORKSPACE", str(workspace))
    trained = TrainModel(**TINY_DEMO).artifact_dir.relative_to(workspace)
    mine, theirs = (torch.load(root / trained / "checkpoint.pth", weights_only=True) for root in (workspace, reference))
    assert mine["epoch"] == theirs["epoch"] == TINY_DEMO["num_epochs"]
    differences = {name: float((mine["model"][name] - value).abs().max()) for name, value in theirs["model"].items()}
    assert max(differences.values()) < 1e-4, differences  # float noise seen: up to 3e-6 (see README)
    evaluated = EvaluateSCAN(**TINY_DEMO).artifact_dir.relative_to(workspace) / RESULTS_FILE
    assert json.loads((workspace / evaluated).read_text()) == json.loads((reference / evaluated).read_text())
