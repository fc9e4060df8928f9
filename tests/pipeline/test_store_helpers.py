"""Small real stores for the store tests: seeded random records, written through the real writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store import RegionRecord, ShardWriter, StoreInfo, commit_manifest, init_store, plan_shards

K, D = 5, 8


def make_record(image_id: str, seed: int, k: int | None = None, d: int = D) -> RegionRecord:
    """A record with values exactly representable in float16, so round trips compare exactly."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, K + 1)) if k is None else k
    return RegionRecord(image_id=image_id,
                        features=(rng.integers(-512, 512, size=(k, d)) / 64).astype(np.float32),
                        boxes=rng.uniform(0, 400, size=(k, 4)).astype(np.float32),
                        object_ids=rng.integers(1, 1601, size=k), object_conf=rng.uniform(size=k).astype(np.float32),
                        attr_ids=rng.integers(1, 401, size=k), attr_conf=rng.uniform(size=k).astype(np.float32),
                        image_hw=(int(rng.integers(100, 500)), int(rng.integers(100, 500))))


def build_store(store_dir: Path, n_images: int, shard_size: int,
                *, feature_dtype: str = "float16") -> list[RegionRecord]:
    """Extract-like run: init, plan, write every planned shard, commit. Returns the records."""
    init_store(store_dir, StoreInfo(feature_dim=D, max_boxes=K, feature_dtype=feature_dtype,
                                    extractor={"name": "test"}))
    images = [(f"img{i}", f"images/img{i}.jpg", f"sha{i}") for i in range(n_images)]
    records = {image_id: make_record(image_id, seed) for seed, (image_id, _, _) in enumerate(images)}
    for plan in plan_shards(images, store_dir, shard_size):
        with ShardWriter.for_store(store_dir, plan.index) as writer:
            for image_id, relpath, sha in plan.images:
                writer.append(records[image_id], relpath=relpath, sha256=sha)
    commit_manifest(store_dir)
    return list(records.values())


def assert_same_record(got: RegionRecord, want: RegionRecord) -> None:
    assert got.image_id == want.image_id and got.image_hw == want.image_hw
    np.testing.assert_array_equal(got.features, want.features)
    for name in ("boxes", "object_ids", "object_conf", "attr_ids", "attr_conf"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
