"""Incremental planning and the manifest: re-runs redo only what is missing or changed."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.store import (StoreReader, ShardWriter, commit_manifest, config_fingerprint, plan_shards,
                            sha256_file, shard_path)
from tests.pipeline.test_store_helpers import assert_same_record, build_store, make_record


def _images(n: int, changed: dict[int, str] = {}) -> list[tuple[str, str, str]]:
    return [(f"img{i}", f"images/img{i}.jpg", changed.get(i, f"sha{i}")) for i in range(n)]


def test_complete_store_plans_nothing(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=10, shard_size=4)
    assert plan_shards(_images(10), tmp_path, 4) == []


def test_rerun_extracts_only_images_of_unfinished_shards(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=4, shard_size=4)
    plans = plan_shards(_images(11), tmp_path, 4)
    assert [plan.index for plan in plans] == [1, 2]
    assert [source.image_id for plan in plans for source in plan.images] == [f"img{i}" for i in range(4, 11)]
    assert plans[0].path == shard_path(tmp_path, 1)


def test_changed_image_goes_to_a_new_shard_and_manifest_points_to_it(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=6, shard_size=3)
    (plan,) = plan_shards(_images(6, changed={4: "new-sha"}), tmp_path, 3)
    assert plan.index == 2 and [source.image_id for source in plan.images] == ["img4"]
    newer = make_record("img4", seed=99)
    with ShardWriter.for_store(tmp_path, plan.index) as writer:
        writer.append(newer, relpath="images/img4.jpg", sha256="new-sha")
    commit_manifest(tmp_path, [image_id for image_id, _, _ in _images(6)])
    manifest = pq.read_table(tmp_path / "manifest.parquet").to_pydict()
    assert manifest["image_id"] == [f"img{i}" for i in range(6)]
    assert (manifest["shard"][4], manifest["row"][4], manifest["sha256"][4]) == (2, 0, "new-sha")
    assert_same_record(StoreReader(tmp_path).get("img4"), newer)
    assert plan_shards(_images(6, changed={4: "new-sha"}), tmp_path, 3) == []
    assert [p.images[0].image_id for p in plan_shards(_images(6), tmp_path, 3)] == ["img4"], "changed back: redo"


def test_failures_are_recorded_and_retried_only_on_request(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=2, shard_size=2)
    with ShardWriter.for_store(tmp_path, 1) as writer:
        writer.append(make_record("img2", seed=2), relpath="images/img2.jpg", sha256="sha2")
        writer.add_failure("img3", "cannot identify image file", relpath="images/img3.jpg", sha256="sha3")
    commit_manifest(tmp_path)
    failures = pq.read_table(tmp_path / "failures.parquet").to_pydict()
    assert failures["image_id"] == ["img3"] and failures["reason"] == ["cannot identify image file"]
    assert "img3" not in StoreReader(tmp_path).image_ids
    assert plan_shards(_images(4), tmp_path, 2) == []
    (retry,) = plan_shards(_images(4), tmp_path, 2, retry_failed=True)
    assert [source.image_id for source in retry.images] == ["img3"]


def test_manifest_is_rebuilt_from_shards_after_a_crash_before_commit(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=3, shard_size=3)
    with ShardWriter.for_store(tmp_path, 1) as writer:
        writer.append(make_record("late", seed=5))
    assert "late" not in StoreReader(tmp_path).image_ids
    commit_manifest(tmp_path)
    assert StoreReader(tmp_path).image_ids == ["img0", "img1", "img2", "late"]


def test_commit_refuses_images_never_extracted(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=2, shard_size=2)
    with pytest.raises(ValueError, match="never extracted.*'ghost'"):
        commit_manifest(tmp_path, ["img0", "ghost"])


def test_duplicate_image_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="more than once"):
        plan_shards([("a", "a.jpg", "1"), ("a", "b.jpg", "2")], tmp_path, 10)


def test_sha256_file_matches_hashlib_on_a_real_image(shared_data: Path) -> None:
    image = next((shared_data / "flickr8k" / "images").glob("*.jpg"))
    assert sha256_file(image) == hashlib.sha256(image.read_bytes()).hexdigest()


def test_config_fingerprint_is_stable_and_order_independent() -> None:
    assert config_fingerprint({"a": 1, "b": [2, 3]}) == config_fingerprint({"b": [2, 3], "a": 1})
    assert config_fingerprint({"a": 1}) != config_fingerprint({"a": 2})
    assert len(config_fingerprint({"a": 1})) == 12
