"""Conventions of the artifact workspace, shared by the workflow, training and the doctor (no luigi here).

Every task's artifact lives in `<workspace>/<TaskName>/<dataset>-<hash>/`. The hash covers the
task's significant settings and the keys of every upstream task (which in turn cover theirs), so
changing anything upstream gives every dependent task a new directory, while untouched branches
keep theirs. The completion marker is written last (temp + rename): a directory without it is
unfinished and its task runs again, resuming from whatever it left there.
"""
from __future__ import annotations

import json
import os
from collections import deque
import re
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipeline.atomic import write_text_atomic
from pipeline.hashing import config_fingerprint

MARKER = "_COMPLETE.json"
WORKSPACE_ENV = "SCAN_WORKSPACE"
DEFAULT_WORKSPACE = "workspace"
KEY_LENGTH = 10
TASK_FOLDER = re.compile(rf"^[A-Za-z0-9_]+-[0-9a-f]{{{KEY_LENGTH}}}$")


def workspace_root(configured: str | None = None) -> Path:
    """$SCAN_WORKSPACE, else `configured` (luigi.cfg [scan] workspace), else ./workspace; absolute."""
    chosen = os.environ.get(WORKSPACE_ENV) or configured or DEFAULT_WORKSPACE
    return Path(chosen).expanduser().resolve()


def artifact_key(family: str, dataset: str, settings: Mapping[str, Any], upstream_keys: Iterable[str]) -> str:
    """`<family>/<dataset>-<hash>`: the hash of the settings and of the sorted upstream keys."""
    payload = {"family": family, "settings": dict(settings), "upstream": sorted(upstream_keys)}
    return f"{family}/{dataset}-{config_fingerprint(payload, KEY_LENGTH)}"


def is_task_folder(path: Path) -> bool:
    """Whether `path` is named like a task's artifact folder (`<dataset>-<hash>`)."""
    return path.is_dir() and TASK_FOLDER.match(path.name) is not None


def sibling_artifacts(artifact_dir: Path) -> list[Path]:
    """The other artifact folders of the same task and dataset (other settings or data versions)."""
    dataset = artifact_dir.name.rsplit("-", 1)[0]
    return sorted(path for path in artifact_dir.parent.glob(f"{dataset}-*")
                  if path != artifact_dir and is_task_folder(path))


def write_json_atomic(final: str | PathLike[str], value: Any) -> None:
    """Readers see the old file or the complete new one (temp + fsync + rename)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(final, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def write_marker(artifact_dir: Path, *, task_id: str, key: str, settings: Mapping[str, Any],
                 upstream: Iterable[str]) -> None:
    """Mark `artifact_dir` complete; the marker lists the upstream keys so tools can walk the chain."""
    write_json_atomic(artifact_dir / MARKER, {"task_id": task_id, "key": key, "settings": dict(settings),
                                              "upstream": sorted(upstream)})


def upstream_keys(artifact_dir: Path) -> list[str]:
    """The upstream keys a finished task's marker lists; [] when there is no readable marker."""
    try:
        upstream = json.loads((artifact_dir / MARKER).read_text(encoding="utf-8")).get("upstream", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [str(key) for key in upstream] if isinstance(upstream, list) else []


def upstream_dirs(artifact_dir: Path, root: Path) -> list[Path]:
    """The folder itself, then every upstream task folder named by the markers, breadth first."""
    seen, order, queue = {artifact_dir}, [artifact_dir], deque([artifact_dir])
    while queue:
        for key in upstream_keys(queue.popleft()):
            folder = (root / key).resolve()
            if folder not in seen and root in folder.parents and folder.is_dir():
                seen.add(folder)
                order.append(folder)
                queue.append(folder)
    return order
