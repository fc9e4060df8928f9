"""StoreReader: batches equal per-image reads, DataLoader workers, clear errors on bad stores."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from pipeline.errors import InputError
from pipeline.store import StoreReader, shard_path
from tests.pipeline.test_store_helpers import D, K, build_store


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("store")
    build_store(folder, n_images=23, shard_size=5)
    return folder


def _brute_force(store: StoreReader, indices: list[int]) -> np.ndarray:
    expected = np.zeros((len(indices), K, D), np.float32)
    for slot, index in enumerate(indices):
        record = store.get(store.image_ids[index])
        expected[slot, :record.num_boxes] = record.features
    return expected


def test_random_batches_match_per_image_reads(store_dir: Path) -> None:
    store = StoreReader(store_dir)
    rng = np.random.default_rng(0)
    for _ in range(5):
        indices = rng.integers(0, len(store), size=9).tolist()
        features, num_boxes = store.read(indices)
        assert features.dtype == np.float32 and num_boxes.dtype == np.int64
        np.testing.assert_array_equal(features, _brute_force(store, indices))
        assert num_boxes.tolist() == [store.get(store.image_ids[i]).num_boxes for i in indices]


def test_index_of_and_bounds(store_dir: Path) -> None:
    store = StoreReader(store_dir)
    assert store.index_of("img7") == 7 and store.image_ids[7] == "img7"
    with pytest.raises(KeyError, match="nope"):
        store.index_of("nope")
    with pytest.raises(IndexError):
        store.read([len(store)])
    assert store.read([])[0].shape == (0, K, D)


class _Batches(Dataset):
    """What SCAN training does: one DataLoader item = one batch of store rows."""

    def __init__(self, store: StoreReader) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, indices: list[int]):
        features, num_boxes = self.store.read(indices)
        opened_here = self.store._pid == os.getpid() and len(self.store._handles) > 0
        return torch.from_numpy(features), torch.from_numpy(num_boxes), torch.tensor(indices), opened_here


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_reader_in_a_dataloader_with_two_workers(store_dir: Path, context: str) -> None:
    store = StoreReader(store_dir)
    store.read([0, 6, 12])  # parent opens handles before the workers fork
    sampler = BatchSampler(RandomSampler(range(len(store)), generator=torch.Generator().manual_seed(0)), 4, False)
    loader = DataLoader(_Batches(store), sampler=sampler, batch_size=None, num_workers=2,
                        multiprocessing_context=context)
    seen = []
    for features, num_boxes, indices, opened_here in loader:
        assert opened_here, "the worker must use its own handles"
        expected, expected_boxes = store.read(indices.tolist())
        np.testing.assert_array_equal(features.numpy(), expected)
        assert num_boxes.tolist() == expected_boxes.tolist()
        seen += indices.tolist()
    assert sorted(seen) == list(range(len(store)))


def test_pickled_store_drops_handles_and_reads_the_same(store_dir: Path) -> None:
    store = StoreReader(store_dir)
    before = store.read([3, 17])[0]
    clone = pickle.loads(pickle.dumps(store))
    assert clone._handles == {}
    np.testing.assert_array_equal(clone.read([3, 17])[0], before)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=2, shard_size=2)
    (tmp_path / "manifest.parquet").unlink()
    with pytest.raises(InputError, match="manifest.parquet.*extraction has not finished"):
        StoreReader(tmp_path)


def test_truncated_shard_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=6, shard_size=3)
    shard = shard_path(tmp_path, 1)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    store = StoreReader(tmp_path)
    store.read([0, 1])
    with pytest.raises(InputError, match="shard-00001.h5.*truncated or corrupt"):
        store.read([4])
