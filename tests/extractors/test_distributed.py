"""Dask extraction: a real LocalCluster of 2 worker processes writes the same store as one process."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pyarrow.parquet as pq
import pytest

from extractors.config import ExtractorConfig
from extractors.distributed import PLUGIN_NAME, DaskRunner
from extractors.extract import DaskConfig, RunConfig, extract_dataset
from extractors.loader import images_in_directory
from pipeline.store import StoreConfig, verify_store

CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu", batch_size=2, min_boxes=2, max_boxes=4,
                                    rpn_pre_nms_topk=100, rpn_post_nms_topk=4)


def _detector_id(dask_worker) -> int:
    return id(dask_worker.plugins[PLUGIN_NAME].detector)


def _raw(dataset: h5py.Dataset) -> object:
    """Bytes of a numeric dataset (exact equality), the strings of a text one."""
    return dataset.asstr()[()].tolist() if h5py.check_string_dtype(dataset.dtype) else dataset[()].tobytes()


def _shard_arrays(store: Path) -> dict[str, dict[str, object]]:
    """shard name -> dataset name -> content, for every dataset of every shard."""
    found: dict[str, dict[str, object]] = {}
    for shard in sorted((store / "shards").glob("shard-*.h5")):
        with h5py.File(shard, "r") as handle:
            found[shard.name] = {name: _raw(handle[name]) for name in handle if isinstance(handle[name], h5py.Dataset)}
    return found


@pytest.mark.slow
def test_local_cluster_store_equals_single_process_store(shared_data: Path, tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for photo in sorted((shared_data / "flickr8k" / "images").glob("*.jpg"))[:3]:
        shutil.copy(photo, images_dir / photo.name)
    (images_dir / "1001-bad.jpg").write_bytes(b"GIF89a broken")
    images = images_in_directory(images_dir)
    # Dask workers run one torch thread each; the same count in one process gives the same bits.
    run, store_config = RunConfig(num_workers=0, torch_threads=1), StoreConfig(shard_size=2)
    single = extract_dataset(images, tmp_path / "single", CONFIG, store=store_config, run=run, progress=False)
    with DaskRunner(CONFIG, run, DaskConfig(n_workers=2), progress=False) as runner:
        workers = runner.client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(address.startswith("tcp://127.0.0.1:") for address in workers)
        models = runner.client.run(_detector_id)
        distributed = extract_dataset(images, tmp_path / "dask", CONFIG, store=store_config, run=run,
                                      runner=runner, progress=False)
        assert runner.client.run(_detector_id) == models  # each worker kept the model it built at start
    assert (distributed.extracted, distributed.failed, distributed.shards_written) == (3, 1, 2)
    assert (single.extracted, single.failed) == (3, 1)
    assert _shard_arrays(tmp_path / "dask") == _shard_arrays(tmp_path / "single")
    for table in ("manifest.parquet", "failures.parquet"):
        assert pq.read_table(tmp_path / "dask" / table).equals(pq.read_table(tmp_path / "single" / table))
    assert verify_store(tmp_path / "dask") == []
