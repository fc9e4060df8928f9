"""Dataset content digests and the file-hash cache behind them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.datasets import ImageRecord
from pipeline.fingerprints import FileHashCache, captions_fingerprint, files_fingerprint, images_fingerprint
from pipeline.hashing import sha256_file


def _record(folder: Path, name: str, split: str = "train", captions: tuple[str, ...] = ("A dog .",)) -> ImageRecord:
    return ImageRecord(name, folder / f"{name}.jpg", f"{name}.jpg", split, captions)


def test_a_touched_file_keeps_its_digest_and_an_edited_one_changes(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"pixels")
    cache = FileHashCache(tmp_path / "cache.sqlite")
    first = cache.sha256(image)
    assert first == sha256_file(image)
    os.utime(image, ns=(1, 1))  # touched: the cache re-reads it (stat changed) and finds the same digest
    assert cache.sha256(image) == first
    image.write_bytes(b"other pixels")
    assert cache.sha256(image) == sha256_file(image) != first
    assert FileHashCache(None).sha256(tmp_path / "absent.jpg") == ""


def test_the_cache_is_shared_by_processes_and_remembers(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"pixels")
    database = tmp_path / "cache.sqlite"
    script = ("import sys; from pipeline.fingerprints import FileHashCache; "
              "print(FileHashCache(sys.argv[1]).sha256(sys.argv[2]))")
    outputs = [subprocess.run([sys.executable, "-c", script, str(database), str(image)], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
               for _ in range(2)]
    assert outputs == [sha256_file(image)] * 2
    image.chmod(0o644)
    with open(image, "r+b") as handle:  # same size and mtime, different bytes: only the cache can answer
        stat = image.stat()
        handle.write(b"PIXELS")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert FileHashCache(database).sha256(image) == outputs[0]  # answered from the cache, by stat (README limitation)


def test_digests_follow_what_each_stage_reads(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.jpg").write_bytes(name.encode())
    cache = FileHashCache(None)
    images = [_record(tmp_path, "a"), _record(tmp_path, "b", "test")]
    captions, pixels = captions_fingerprint(images), images_fingerprint(images, cache)
    recaptioned = [_record(tmp_path, "a", captions=("A cat .",)), images[1]]
    assert captions_fingerprint(recaptioned) != captions and images_fingerprint(recaptioned, cache) == pixels
    (tmp_path / "b.jpg").write_bytes(b"new pixels")
    assert images_fingerprint(images, cache) != pixels and captions_fingerprint(images) == captions
    assert files_fingerprint([tmp_path / "a.jpg"], cache) != files_fingerprint([tmp_path / "b.jpg"], cache)
