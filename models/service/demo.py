"""The demo's artifacts in a workspace, for ``python -m models serve --demo`` (``make serve``), without Luigi.

The newest finished ``TrainModel/demo-*`` folder names its store, captions and vocabulary in its
training spec; the images are in the upstream folder (GenerateDemo) that holds the store's
relative image paths.
"""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import pyarrow.parquet as pq

from models.service.backend import ServiceFiles
from models.train import BEST_CHECKPOINT
from pipeline.errors import InputError
from pipeline.store.layout import MANIFEST
from pipeline.workspace import MARKER, is_task_folder, upstream_dirs, workspace_root

SPEC_FILE = "train_spec.json"
DEMO = "demo"


def demo_files(workspace: str | PathLike[str] | None = None) -> ServiceFiles:
    """Checkpoint, store, vocab, captions and images root of the newest demo model in ``workspace``."""
    root = Path(workspace).resolve() if workspace is not None else workspace_root()
    runs = [folder for folder in (root / "TrainModel").glob(f"{DEMO}-*") if is_task_folder(folder)
            and (folder / MARKER).is_file() and (folder / BEST_CHECKPOINT).is_file() and (folder / SPEC_FILE).is_file()]
    if not runs:
        raise InputError(root, "no finished demo model here (TrainModel/demo-*): run `make demo` first, "
                               "or name the workspace that holds it (--workspace or SCAN_WORKSPACE)")
    run = max(runs, key=lambda folder: (folder / BEST_CHECKPOINT).stat().st_mtime)
    spec = json.loads((run / SPEC_FILE).read_text(encoding="utf-8"))
    store = (run / spec["store_dir"]).resolve()
    return ServiceFiles(checkpoint=run / BEST_CHECKPOINT, store=store, vocab=(run / spec["vocab"]).resolve(),
                        captions=(run / spec["captions"]).resolve(), images_root=images_root(store, root))


def images_root(store: Path, root: Path) -> Path | None:
    """The folder (an upstream task's, or one level inside it) where the store's first relative path exists."""
    relpath = pq.read_table(store / MANIFEST, columns=["relpath"]).slice(0, 1).column("relpath").to_pylist()
    if not relpath:
        return None
    for folder in upstream_dirs(store.parent, root):
        for candidate in (folder, *sorted(path for path in folder.iterdir() if path.is_dir())):
            if (candidate / relpath[0]).is_file():
                return candidate
    return None
