"""verify_store and `python -m pipeline.store verify`: each kind of damage is found and explained."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import ShardWriter, commit_manifest, shard_path, verify_store
from tests.pipeline.test_store_helpers import build_store, make_record

REPO = Path(__file__).resolve().parents[2]


def _cli(store_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.store", "verify", str(store_dir)],
                          cwd=REPO, capture_output=True, text=True)


def _only_problem(store_dir: Path, **kwargs) -> str:
    problems = verify_store(store_dir, **kwargs)
    assert len(problems) == 1, problems
    return str(problems[0])


def test_clean_store_passes_and_cli_exits_zero(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=7, shard_size=3)
    assert verify_store(tmp_path) == []
    result = _cli(tmp_path)
    assert result.returncode == 0 and "OK" in result.stdout


def test_truncated_shard_is_reported_and_cli_fails(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=7, shard_size=3)
    shard = shard_path(tmp_path, 2)
    shard.write_bytes(shard.read_bytes()[:1000])
    problems = [str(problem) for problem in verify_store(tmp_path)]
    assert any("shard-00002.h5" in p and "truncated or corrupt" in p for p in problems)
    assert any("point to shard 2, which is missing or unusable" in p for p in problems)
    result = _cli(tmp_path)
    assert result.returncode == 1 and "shard-00002.h5" in result.stderr and "fix:" in result.stderr


def test_nan_in_features_names_the_image(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=4, shard_size=4)
    with h5py.File(shard_path(tmp_path, 0), "r+") as shard:
        shard["features"][2, 0, 0] = np.nan
    assert "image 'img2' (row 2) contain NaN" in _only_problem(tmp_path)
    assert verify_store(tmp_path, check_values=False) == []


def test_manifest_disagreeing_with_shard_is_reported(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=4, shard_size=4)
    table = pq.read_table(tmp_path / "manifest.parquet")
    rows = table.column("row").to_pylist()
    rows[0], rows[1] = rows[1], rows[0]
    pq.write_table(table.set_column(table.schema.get_field_index("row"), "row", pa.array(rows, pa.int32())),
                   tmp_path / "manifest.parquet")
    assert "entry 0 says ('img0'" in _only_problem(tmp_path)


def test_missing_manifest_temp_leftovers_and_wrong_shapes(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=2, shard_size=2)
    (tmp_path / "shards" / "shard-00001.h5.tmp-999").write_bytes(b"partial")
    assert "leftover temp file" in _only_problem(tmp_path)
    (tmp_path / "shards" / "shard-00001.h5.tmp-999").unlink()
    with h5py.File(shard_path(tmp_path, 0), "r+") as shard:
        del shard["boxes"]
        shard["boxes"] = np.zeros((2, 5, 3), np.float32)
    assert "dataset 'boxes' is (2, 5, 3)" in str(verify_store(tmp_path)[0])
    (tmp_path / "manifest.parquet").unlink()
    assert any("manifest.parquet: missing" in str(p) for p in verify_store(tmp_path))


def test_not_a_store(tmp_path: Path) -> None:
    assert "store.json: missing" in _only_problem(tmp_path)
    assert _cli(tmp_path).returncode == 1


def test_stale_manifest_after_an_interrupted_rerun(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=3, shard_size=3)
    with ShardWriter.for_store(tmp_path, 1) as writer:
        writer.append(make_record("img1", seed=50), relpath="images/img1.jpg", sha256="changed")
    assert "stale: image 'img1' has a newer row in shard 1" in _only_problem(tmp_path)
    commit_manifest(tmp_path)
    assert verify_store(tmp_path) == []
