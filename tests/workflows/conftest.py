"""Fixtures for the workflow tests: a private workspace, a clean luigi, a real luigid."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import luigi
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LUIGID = Path(sys.executable).with_name("luigid")


@pytest.fixture(autouse=True)
def clean_luigi() -> Iterator[None]:
    """Luigi caches task instances and config globally; start each test from scratch."""
    luigi.task_register.Register.clear_instance_cache()
    luigi.configuration.get_config().reload()
    yield
    luigi.task_register.Register.clear_instance_cache()


@pytest.fixture
def ran_tasks() -> Iterator[list[str]]:
    """Task ids that ran successfully in this process, in order (from luigi's SUCCESS event)."""
    ran: list[str] = []

    def record(task: luigi.Task) -> None:
        ran.append(task.task_id)

    luigi.Task.event_handler(luigi.Event.SUCCESS)(record)
    yield ran
    luigi.Task.remove_event_handler(luigi.Event.SUCCESS, record)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "workspace"
    monkeypatch.setenv("SCAN_WORKSPACE", str(root))
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_luigid(folder: Path) -> Iterator[int]:
    """A real central scheduler on 127.0.0.1 with its own state file; yields its port."""
    port = free_port()
    logdir = folder / "luigid-log"
    logdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(LUIGID), "--address", "127.0.0.1", "--port", str(port),
         "--state-path", str(folder / "luigid-state.pickle"), "--logdir", str(logdir)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"luigid did not start; see {logdir}")
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def luigi_command(args: list[str], workspace: Path) -> tuple[list[str], dict[str, str]]:
    """`luigi --module workflows ...` as a user runs it from the repository root."""
    env = dict(os.environ, SCAN_WORKSPACE=str(workspace), PYTHONPATH=str(REPO_ROOT))
    return [str(Path(sys.executable).with_name("luigi")), "--module", "workflows", *args], env


def run_luigi(args: list[str], workspace: Path, *, timeout: float = 600) -> subprocess.CompletedProcess:
    command, env = luigi_command(args, workspace)
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


TINY_DEMO: dict[str, object] = {
    "dataset": "demo", "demo_train_images": 20, "demo_val_images": 5, "demo_test_images": 5, "shard_size": 10,
    "extractor_test_short_side": 64, "extractor_test_max_side": 80, "num_workers": 0,
    "num_epochs": 2, "warmup_epochs": 1, "batch_size": 10, "embed_size": 32, "word_dim": 32,
}
"""The demo chain at test size: 30 images in 3 shards, a 2-epoch model; seconds per stage."""


def params_of(task_cls: type, params: dict[str, object]) -> dict[str, object]:
    """The subset of `params` that `task_cls` takes (what luigi's clone() would pass it)."""
    names = dict(task_cls.get_params())
    return {name: value for name, value in params.items() if name in names}


def as_flags(params: dict[str, object]) -> list[str]:
    """{"num_epochs": 2} -> ["--num-epochs", "2"] (luigi's command-line spelling)."""
    flags = []
    for name, value in params.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags
