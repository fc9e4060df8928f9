"""Finding the demo's artifacts in a workspace laid out as the workflow leaves it (markers naming upstream keys)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from models.__main__ import main
from models.service.app import remote_warning
from models.service.demo import demo_files
from pipeline.errors import InputError
from pipeline.workspace import write_marker
from tests.models.service.conftest import build_service_files

GENERATE, FEATURES, TRAIN = "GenerateDemo/demo-aaaaaaaaaa", "FeatureStore/demo-bbbbbbbbbb", "TrainModel/demo-cccccccccc"


def finish(folder, key, upstream):
    write_marker(folder, task_id=key, key=key, settings={}, upstream=upstream)


def test_the_newest_finished_demo_model_and_its_images_are_found(tmp_path):
    source = build_service_files(tmp_path / "built", with_index=False)
    root = tmp_path / "workspace"
    shutil.copytree(source.images_root, root / GENERATE / "demo")
    shutil.copytree(source.store, root / FEATURES / "store")
    train = root / TRAIN
    train.mkdir(parents=True)
    shutil.copy(source.checkpoint, train / "model_best.pth")
    shutil.copy(source.vocab, root / "vocab.json")
    shutil.copy(source.captions, root / "captions.txt")
    (train / "train_spec.json").write_text(json.dumps({"store_dir": f"../../{FEATURES}/store",
                                                       "vocab": "../../vocab.json", "captions": "../../captions.txt"}))
    finish(root / GENERATE, GENERATE, [])
    finish(root / FEATURES, FEATURES, [GENERATE])
    finish(train, TRAIN, [FEATURES])
    (root / "TrainModel" / "demo-dddddddddd").mkdir()  # unfinished: no marker, no checkpoint

    files = demo_files(root)
    assert files.checkpoint == train / "model_best.pth" and files.store == (root / FEATURES / "store").resolve()
    assert files.vocab == (root / "vocab.json").resolve() and files.captions == (root / "captions.txt").resolve()
    assert files.images_root == (root / GENERATE / "demo").resolve()


def test_an_empty_workspace_says_to_run_the_demo(tmp_path):
    with pytest.raises(InputError, match="make demo"):
        demo_files(tmp_path)


def test_only_loopback_is_served_without_the_explicit_flag():
    assert remote_warning("127.0.0.1", False) is None and remote_warning("::1", False) is None
    assert remote_warning("localhost", False) is None
    with pytest.raises(InputError, match="--allow-remote"):
        remote_warning("0.0.0.0", False)
    assert "no authentication" in remote_warning("0.0.0.0", True)


def test_serve_needs_the_demo_or_all_three_files(capsys):
    assert main(["serve", "--checkpoint", "model.pth"]) == 2
    assert "either --demo or all of --checkpoint, --store and --vocab" in capsys.readouterr().err
    assert main(["serve", "--demo", "--store", "store"]) == 2


def test_the_command_serves_until_stopped_and_refuses_a_public_host(service):
    """`python -m models serve` as a user starts it: a process answering /healthz, stopped by SIGTERM."""
    files = service.files
    command = [sys.executable, "-m", "models", "serve", "--checkpoint", str(files.checkpoint), "--store",
               str(files.store), "--vocab", str(files.vocab), "--images-root", str(files.images_root)]
    refused = subprocess.run(command + ["--host", "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(command + ["--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None and health.json()["images"] == 13
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "serving on http://127.0.0.1:" in server.stderr.read()
