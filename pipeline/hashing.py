"""Content hashes: of files (to notice changes) and of settings (to name the artifacts they produced)."""
from __future__ import annotations

import hashlib
import json
from os import PathLike
from typing import Any, Mapping

_CHUNK = 1 << 20


def sha256_file(path: str | PathLike[str]) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks so large files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Mapping[str, Any]) -> str:
    """One spelling per mapping (sorted keys, no spaces), so equal settings compare and hash equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_fingerprint(config: Mapping[str, Any], length: int = 12) -> str:
    """Short stable hash of a settings mapping, for naming what it produced."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:length]
