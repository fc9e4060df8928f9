"""What a dataset's content is, as short digests, so that artifacts can be keyed by the data they read.

Hashing every image of COCO on each run would take minutes, so file digests are cached in a small
SQLite table keyed by (path, size, mtime_ns, inode): a file is read again only when one of those
changes, and a touched but unchanged file still gives the same digest. Processes may share the cache
(SQLite's own locking); a cache that cannot be opened or written only costs speed.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Optional

from pipeline.hashing import config_fingerprint, sha256_file

log = logging.getLogger(__name__)
_SCHEMA = ("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
           "inode INTEGER, sha256 TEXT)")


class FileHashCache:
    """sha256 of files, remembered by their stat; `FileHashCache(None)` hashes without remembering.

    The database is opened lazily in each process and thread that uses it (a connection must not cross a
    fork, as Luigi's worker processes would make it).
    """

    def __init__(self, database: Optional[str | PathLike[str]]) -> None:
        self.database = None if database is None else Path(database)
        self._connections: dict[tuple[int, int], Optional[sqlite3.Connection]] = {}

    def sha256(self, path: str | PathLike[str]) -> str:
        """Hex sha256 of the file; "" when it cannot be read (whoever decodes it reports why)."""
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            return ""
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        cached = self._lookup(key)
        if cached is not None:
            return cached
        try:
            digest = sha256_file(path)
        except OSError:
            return ""
        self._remember(key, digest)
        return digest

    def _db(self) -> Optional[sqlite3.Connection]:
        owner = (os.getpid(), threading.get_ident())
        if owner not in self._connections:
            self._connections[owner] = None
            if self.database is not None:
                try:
                    self.database.parent.mkdir(parents=True, exist_ok=True)
                    connection = sqlite3.connect(str(self.database), timeout=60)
                    connection.execute(_SCHEMA)
                    self._connections[owner] = connection
                except (OSError, sqlite3.Error) as error:
                    log.warning("file hash cache %s unusable (%s); hashing without it", self.database, error)
        return self._connections[owner]

    def _lookup(self, key: tuple[str, int, int, int]) -> Optional[str]:
        db = self._db()
        if db is None:
            return None
        try:
            row = db.execute("SELECT sha256 FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
                             key).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else str(row[0])

    def _remember(self, key: tuple[str, int, int, int], digest: str) -> None:
        db = self._db()
        if db is None:
            return
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", (*key, digest))
        except sqlite3.Error as error:
            log.warning("file hash cache not updated (%s)", error)


def captions_fingerprint(images: Iterable[Any]) -> str:
    """Digest of what caption stages read: each image's id, split and captions, in order."""
    return config_fingerprint({"images": [[image.image_id, image.split, list(image.captions)] for image in images]})


def images_fingerprint(images: Iterable[Any], hashes: FileHashCache, extra_files: Iterable[Path] = ()) -> str:
    """Digest of what extraction reads: each image's id, relative path and file content, plus `extra_files`
    (e.g. the given-boxes JSON)."""
    rows = [[image.image_id, image.relpath, hashes.sha256(image.path)] for image in images]
    return config_fingerprint({"images": rows, "extra": [hashes.sha256(path) for path in extra_files]})


def files_fingerprint(paths: Iterable[Path], hashes: FileHashCache) -> str:
    """Digest of a set of files by name and content (imported feature files, a given vocabulary, weights)."""
    return config_fingerprint({os.fspath(path.name): hashes.sha256(path) for path in sorted(paths)})
