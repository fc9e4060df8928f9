"""Lazy precomp features and caption/region batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data import (CaptionPairs, first_images, PrecompFeatures, RegionSource, image_index_for_captions,
                         pad_captions)
from pipeline.errors import InputError


@pytest.fixture()
def features_file(tmp_path):
    array = np.random.default_rng(0).normal(size=(6, 3, 4)).astype(np.float32)
    path = tmp_path / "test_ims.npy"
    np.save(path, array)
    return path, array


def test_precomp_reads_requested_rows_in_order(features_file):
    path, array = features_file
    source = PrecompFeatures(path)
    assert isinstance(source, RegionSource)
    assert len(source) == 6 and source.image_ids[:2] == ["0", "1"] and source.feature_dim == 4
    features, num_boxes = source.read([4, 1, 4, 0])
    np.testing.assert_array_equal(features, array[[4, 1, 4, 0]])
    assert features.dtype == np.float32 and num_boxes.tolist() == [3, 3, 3, 3]
    with pytest.raises(IndexError):
        source.read([6])


def test_precomp_is_memory_mapped_not_loaded(features_file):
    path, _ = features_file
    assert isinstance(PrecompFeatures(path)._array, np.memmap)


def test_precomp_rejects_bad_files(tmp_path):
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(InputError, match="flat.npy.*shape"):
        PrecompFeatures(flat)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy")
    with pytest.raises(InputError, match="garbage.npy"):
        PrecompFeatures(garbage)


def test_pad_captions_zero_pads_to_longest():
    padded, lengths = pad_captions([[1, 5, 2], [1, 2]])
    assert padded.tolist() == [[1, 5, 2], [1, 2, 0]] and lengths.tolist() == [3, 2]


def test_batch_pairs_captions_with_their_images_sorted_by_length(features_file):
    path, array = features_file
    captions = [[1] + [7] * (i % 4) + [2] for i in range(30)]  # lengths 2..5
    pairs = CaptionPairs(PrecompFeatures(path), captions, image_index_for_captions(6, 30, source=path))
    batch = pairs[[0, 3, 11, 29]]
    assert batch.lengths.tolist() == [5, 5, 3, 2]
    assert batch.caption_index.tolist() == [3, 11, 29, 0]
    assert batch.image_index.tolist() == [0, 2, 5, 0]
    np.testing.assert_array_equal(batch.images.numpy(), array[[0, 2, 5, 0]])
    assert batch.captions.shape == (4, 5) and batch.captions[3, 2:].eq(0).all()
    assert batch.image_lens.tolist() == [3, 3, 3, 3]


def test_dataloader_yields_whole_batches(features_file):
    path, _ = features_file
    pairs = CaptionPairs(PrecompFeatures(path), [[1, 2]] * 6, np.arange(6))
    loader = torch.utils.data.DataLoader(pairs, sampler=[[0, 1, 2], [3, 4, 5]], batch_size=None)
    assert [b.image_index.tolist() for b in loader] == [[0, 1, 2], [3, 4, 5]]


def test_caption_image_pairing_rules(tmp_path):
    assert image_index_for_captions(2, 10, source="x").tolist() == [0] * 5 + [1] * 5
    assert image_index_for_captions(3, 3, source="x").tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="caps.txt.*7 captions for 2 images"):
        image_index_for_captions(2, 7, source=tmp_path / "caps.txt")


def test_bad_pairings_are_refused(features_file):
    path, _ = features_file
    source = PrecompFeatures(path)
    with pytest.raises(ValueError, match="image indices"):
        CaptionPairs(source, [[1, 2]], [6])
    with pytest.raises(ValueError, match="empty caption"):
        CaptionPairs(source, [[]], [0])
    with pytest.raises(ValueError, match="2 captions but 1 image"):
        CaptionPairs(source, [[1, 2], [1, 2]], [0])


def test_first_images_keeps_their_captions_only(features_file):
    path, array = features_file
    pairs = CaptionPairs(PrecompFeatures(path), [[1, 2]] * 30, image_index_for_captions(6, 30, source=path))
    head = first_images(pairs, 2)
    assert len(head) == 10 and len(head.regions) == 2 and head.regions.image_ids == ["0", "1"]
    np.testing.assert_array_equal(head.regions.read([1])[0], array[[1]])
    with pytest.raises(IndexError):
        head.regions.read([2])
    assert len(first_images(pairs, 100).regions) == 6
