"""The saved search index of a store: built once, updated with only the new images, never used stale."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.compat import load_model
from models.index import RowFile, check_index, checkpoint_key, ensure_index, index_dir, open_index
from models.search import SearchConfig, SearchIndex
from pipeline.errors import InputError
from pipeline.store import ShardWriter, commit_manifest
from tests.models.test_search import (QUERY, TARGET, features_matching, known_match_setup, make_checkpoint, make_vocab,
                                      record)

NEW_QUERY = "a green star and a small square"


def add_images(store, model, vocab, first_shard: int, ids: list[str], sha: str = "new") -> None:
    """A new shard of images (the first one built to match NEW_QUERY), then the manifest: what a
    re-run of extraction over a folder with more images does."""
    rng = np.random.default_rng(first_shard)
    with ShardWriter.for_store(store, first_shard) as writer:
        for n, image_id in enumerate(ids):
            features = (features_matching(model, vocab, NEW_QUERY) if n == 0 else
                        rng.normal(size=(3, 24)).astype(np.float32))
            writer.append(record(image_id, features, rng), relpath=f"images/{image_id}.png", sha256=f"{sha}-{image_id}")
    commit_manifest(store)


class EncodedCount:
    """Counts the images the model's image encoder sees (a forward hook on the real encoder)."""

    def __init__(self, model) -> None:
        self.images = 0
        model.img_enc.register_forward_hook(lambda module, inputs, output: self.count(inputs[0]))

    def count(self, features: torch.Tensor) -> None:
        self.images += features.shape[0]


@pytest.fixture
def setup(tmp_path):
    return known_match_setup(tmp_path, n_images=40)


def test_built_once_then_reused_fresh(setup):
    checkpoint, store, vocab = setup
    key = checkpoint_key(checkpoint)
    assert check_index(store, key).status == "missing"
    model = load_model(checkpoint).model
    counter = EncodedCount(model)
    built, status = ensure_index(model, store, checkpoint)
    assert "built" in status and len(built) == 40 and counter.images == 40
    assert index_dir(store, key).parent == store.with_name("store.search")
    again, status = ensure_index(model, store, checkpoint)
    assert "up to date" in status and counter.images == 40
    assert again.image_ids == built.image_ids and again.info["index_kind"] == "flat"
    np.testing.assert_array_equal(np.asarray(again.regions.emb), np.asarray(built.regions.emb))


def test_adding_one_percent_of_images_encodes_only_those_and_search_sees_them(tmp_path):
    checkpoint, store, vocab_path = known_match_setup(tmp_path, n_images=200)
    model = load_model(checkpoint).model
    vocab = make_vocab(tmp_path / "vocab.json")
    ensure_index(model, store, checkpoint)
    key = checkpoint_key(checkpoint)
    before = open_index(store, key)
    old_regions, old_vectors = np.array(before.regions.emb), before.global_vectors(np.arange(200))
    add_images(store, make_checkpoint(tmp_path / "unused.pth"), vocab, 1, ["new00", "new01"])
    state = check_index(store, key)
    assert state.status == "grown" and len(state.added) == 2
    counter = EncodedCount(model)
    updated, status = ensure_index(model, store, checkpoint)
    assert counter.images == 2 and "updated" in status and len(updated) == 202
    np.testing.assert_array_equal(np.asarray(updated.regions.emb[:200]), old_regions)
    np.testing.assert_array_equal(updated.global_vectors(np.arange(200)), old_vectors)
    assert check_index(store, key).status == "fresh"
    index = SearchIndex.open(checkpoint, store, vocab_path, policy="require")
    [new] = index.search_text([NEW_QUERY], SearchConfig(top_k=3, mode="exact"))
    [staged] = index.search_text([NEW_QUERY], SearchConfig(top_k=3, mode="two-stage", shortlist=202))
    assert new.hits[0].image_id == staged.hits[0].image_id == "new00"


def test_a_changed_image_makes_the_index_stale_rebuilt_or_refused(setup):
    checkpoint, store, vocab = setup
    model = load_model(checkpoint).model
    ensure_index(model, store, checkpoint)
    add_images(store, model, make_vocab(store.parent / "v2.json"), 1, ["img05"], sha="re-extracted")
    state = check_index(store, checkpoint_key(checkpoint))
    assert state.status == "stale" and "img05" in state.reason
    with pytest.raises(InputError, match="changed or left the store"):
        ensure_index(model, store, checkpoint, policy="require")
    counter = EncodedCount(model)
    rebuilt, status = ensure_index(model, store, checkpoint)
    assert ("built" in status and counter.images == 40
            and check_index(store, checkpoint_key(checkpoint)).status == "fresh")


def test_another_checkpoint_has_no_index_and_require_says_so(setup, tmp_path):
    checkpoint, store, vocab = setup
    ensure_index(load_model(checkpoint).model, store, checkpoint)
    other = make_checkpoint(tmp_path / "other.pth", seed=9)
    assert check_index(store, checkpoint_key(tmp_path / "other.pth")).status == "missing"
    with pytest.raises(InputError, match="no search index for this checkpoint"):
        SearchIndex.open(tmp_path / "other.pth", store, vocab, policy="require")
    assert other is not None


def test_an_interrupted_update_leaves_the_previous_generation_usable(setup):
    checkpoint, store, vocab = setup
    model = load_model(checkpoint).model
    index, _ = ensure_index(model, store, checkpoint)
    with open(index.directory / "regions.f16", "ab") as handle:  # an update killed after appending bytes
        handle.write(b"\x00" * 1000)
    assert check_index(store, checkpoint_key(checkpoint)).status == "fresh"
    [result] = SearchIndex.open(checkpoint, store, vocab, policy="require").search_text(
        [QUERY], SearchConfig(top_k=1, mode="two-stage", shortlist=40))
    assert result.hits[0].image_id == TARGET


def test_row_file_reads_what_a_memory_map_reads(tmp_path):
    path = tmp_path / "rows.f16"
    rows = np.random.default_rng(0).standard_normal((50, 3, 4)).astype(np.float16)
    rows.tofile(path)
    read = RowFile(path, (50, 3, 4))
    wanted = np.array([7, 3, 4, 5, 49, 3, 0])        # unsorted, a run, a repeat, both ends
    np.testing.assert_array_equal(read[wanted], rows[wanted])
    np.testing.assert_array_equal(read[10:20], rows[10:20])
    np.testing.assert_array_equal(read[-1], rows[-1])
    np.testing.assert_array_equal(np.asarray(read), rows)
    assert read[5:5].shape == (0, 3, 4) and read[np.array([], dtype=np.int64)].shape == (0, 3, 4)
    with pytest.raises(IndexError, match="rows.f16"):
        read[np.array([50])]
    with pytest.raises(InputError, match="shorter than the 60 items"):
        RowFile(path, (60, 3, 4))


def test_a_file_cut_after_opening_is_reported_with_its_name(tmp_path):
    path = tmp_path / "rows.f16"
    np.zeros((10, 4), dtype=np.float16).tofile(path)
    read = RowFile(path, (10, 4))
    with open(path, "r+b") as handle:
        handle.truncate(5 * 4 * 2)
    with pytest.raises(InputError, match="rows.f16.*ends before row 10"):
        read[np.array([2, 9])]


def test_searching_maps_no_index_file_into_memory(setup):
    """The re-ranking reads region rows with positional reads: a memory map of a file whose pages are
    in the page cache as large folios would make whole folios resident per scattered read."""
    checkpoint, store, vocab = setup
    index = SearchIndex.open(checkpoint, store, vocab)
    for mode in ("exact", "two-stage"):
        [result] = index.search_text([QUERY], SearchConfig(top_k=3, mode=mode, shortlist=10))
        assert result.hits[0].image_id == TARGET
    mapped = Path("/proc/self/maps").read_text()
    assert str(index.gallery.directory) not in mapped
