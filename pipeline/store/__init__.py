"""Sharded HDF5 store of region features: write shards atomically, plan re-runs, read batches.

Typical extraction loop (see README):
    init_store(dir, StoreInfo(...)); for plan in plan_shards(images, dir, size):
    with ShardWriter.for_store(dir, plan.index) as w: w.append(record, relpath=..., sha256=...)
    then commit_manifest(dir). Training reads with StoreReader(dir).read(indices).
"""
from pipeline.store.config import StoreConfig
from pipeline.hashing import config_fingerprint, sha256_file
from pipeline.store.layout import StoreInfo, adopt_shards, init_store, open_shard, read_store_info, shard_path
from pipeline.store.planning import ImageSource, ShardPlan, commit_manifest, plan_shards, read_failures
from pipeline.store.reader import StoreReader
from pipeline.store.records import RegionRecord
from pipeline.store.verify import Problem, verify_store
from pipeline.store.writer import ShardWriter

__all__ = ["StoreReader", "ImageSource", "Problem", "RegionRecord", "ShardPlan", "ShardWriter", "StoreConfig",
           "StoreInfo", "adopt_shards", "commit_manifest", "config_fingerprint", "init_store", "open_shard",
           "plan_shards", "read_failures", "read_store_info", "sha256_file", "shard_path", "verify_store"]
