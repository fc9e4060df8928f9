"""A real service for the tests: a seeded model, a store whose TARGET image is built to match QUERY
(tests.models.test_search), image files on disk, a captions file, the saved search index, and
uvicorn serving the app on a free loopback port in a thread."""
from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from models.compat import load_model
from models.index import ensure_index
from models.service.app import create_app
from models.service.backend import SearchBackend, ServiceFiles
from pipeline.store import ShardWriter, StoreInfo, commit_manifest, init_store
from tests.models.test_search import (CONFIG, MAX_BOXES, QUERY, TARGET, features_matching, make_checkpoint, make_vocab,
                                      record)

ESCAPING = "escape"          # an image whose manifest path points outside the images root
CAPTIONS = [QUERY, "big green star", "small left of square", "green and star"]


@dataclass(frozen=True)
class Service:
    files: ServiceFiles
    root: Path               # everything the service could write into lives under it


def build_service_files(root: Path, n_images: int = 12, *, with_index: bool = True) -> ServiceFiles:
    root.mkdir(parents=True, exist_ok=True)
    vocab = make_vocab(root / "vocab.json")
    model = make_checkpoint(root / "model.pth")
    rng = np.random.default_rng(5)
    images = root / "images_root"
    (images / "images").mkdir(parents=True)
    (root / "secret.txt").write_text("outside the images root")
    store = root / "store"
    init_store(store, StoreInfo(feature_dim=CONFIG.img_dim, max_boxes=MAX_BOXES, feature_dtype="float32"))
    with ShardWriter.for_store(store, 0) as writer:
        for i in range(n_images):
            image_id = f"img{i:02d}"
            features = (features_matching(model, vocab, QUERY) if image_id == TARGET else
                        rng.normal(size=(int(rng.integers(2, MAX_BOXES + 1)), CONFIG.img_dim)).astype(np.float32))
            writer.append(record(image_id, features, rng), relpath=f"images/{image_id}.png")
            Image.fromarray(rng.integers(0, 255, size=(100, 120, 3), dtype=np.uint8)).save(
                images / "images" / f"{image_id}.png")
        writer.append(record(ESCAPING, rng.normal(size=(3, CONFIG.img_dim)).astype(np.float32), rng),
                      relpath="../secret.txt")
    commit_manifest(store)
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    if with_index:
        ensure_index(load_model(root / "model.pth").model, store, root / "model.pth")
    return ServiceFiles(root / "model.pth", store, root / "vocab.json", root / "captions.txt", images)


@contextlib.contextmanager
def running(files: ServiceFiles):
    """uvicorn serving the app of ``files`` on a free 127.0.0.1 port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(SearchBackend.open(files)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every file under ``root``: what a write would change."""
    return {str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="package")
def service(tmp_path_factory) -> Service:
    root = tmp_path_factory.mktemp("service")
    return Service(build_service_files(root), root)


@pytest.fixture(scope="package")
def base_url(service):
    with running(service.files) as url:
        yield url
