"""Where task artifacts live: `<workspace>/<TaskName>/<dataset>-<hash>/`, finished by a marker file.

The hash covers the task's significant settings and the keys of every upstream task (which in
turn cover theirs), so changing anything upstream gives every dependent task a new directory,
while untouched branches keep theirs. The marker is written last (temp + rename): a directory
without it is unfinished and its task runs again, resuming from whatever it left there.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import luigi

from pipeline.atomic import write_text_atomic

MARKER = "_COMPLETE.json"
WORKSPACE_ENV = "SCAN_WORKSPACE"
KEY_LENGTH = 10


def workspace_root() -> Path:
    """$SCAN_WORKSPACE, else luigi.cfg [scan] workspace, else ./workspace (absolute)."""
    configured = os.environ.get(WORKSPACE_ENV) or luigi.configuration.get_config().get("scan", "workspace", "workspace")
    return Path(configured).expanduser().resolve()


def canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def artifact_key(family: str, dataset: str, settings: Mapping[str, Any], upstream_keys: Iterable[str]) -> str:
    """`<family>/<dataset>-<hash>`: the hash of the settings and of the sorted upstream keys."""
    payload = canonical({"family": family, "settings": dict(settings), "upstream": sorted(upstream_keys)})
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_LENGTH]
    return f"{family}/{dataset}-{digest}"


def write_json_atomic(final: Path, value: Any) -> None:
    """Readers see the old file or the complete new one (temp + fsync + rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(final, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
