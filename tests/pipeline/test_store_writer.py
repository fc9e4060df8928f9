"""ShardWriter: exact round trips, padding, validation, atomic publication, no mixing of stores."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.store import StoreReader, ShardWriter, StoreInfo, init_store, read_store_info, shard_path
from tests.pipeline.test_store_helpers import D, K, assert_same_record, build_store, make_record

REPO = Path(__file__).resolve().parents[2]


def test_round_trip_float16_and_float32(tmp_path: Path) -> None:
    for dtype in ("float16", "float32"):
        records = build_store(tmp_path / dtype, n_images=7, shard_size=3, feature_dtype=dtype)
        store = StoreReader(tmp_path / dtype)
        assert store.image_ids == [r.image_id for r in records]
        for record in records:
            assert_same_record(store.get(record.image_id), record)
        with h5py.File(shard_path(tmp_path / dtype, 0)) as shard:
            assert shard["features"].dtype == np.dtype(dtype)
            assert shard["features"].chunks == (1, K, D)
            assert shard["features"].shape == (3, K, D)


def test_rows_are_padded_with_zeros(tmp_path: Path) -> None:
    init_store(tmp_path, StoreInfo(feature_dim=D, max_boxes=K))
    with ShardWriter.for_store(tmp_path, 0) as writer:
        writer.append(make_record("a", seed=1, k=2))
    with h5py.File(shard_path(tmp_path, 0)) as shard:
        assert shard["num_boxes"][0] == 2
        for name in ("features", "boxes", "object_ids", "object_conf", "attr_ids", "attr_conf"):
            assert not shard[name][0, 2:].any(), name
            assert shard[name][0, :2].any(), name


@pytest.mark.parametrize("change, message", [
    (lambda r: setattr(r, "features", r.features[:, :3]), "features have shape"),
    (lambda r: setattr(r, "features", np.zeros((K + 1, D), np.float32)), "features have shape"),
    (lambda r: r.features.__setitem__((0, 0), np.nan), "NaN or Inf"),
    (lambda r: r.boxes.__setitem__((0, 0), np.inf), "boxes contain NaN or Inf"),
    (lambda r: r.features.__setitem__((0, 0), 1e6), "float16 range"),
    (lambda r: setattr(r, "attr_conf", r.attr_conf[:1]), "attr_conf has shape"),
    (lambda r: setattr(r, "image_hw", (-1, 4)), "image_hw"),
])
def test_bad_records_are_refused_naming_the_image(tmp_path: Path, change, message: str) -> None:
    init_store(tmp_path, StoreInfo(feature_dim=D, max_boxes=K))
    record = make_record("broken-7", seed=3, k=3)
    change(record)
    with pytest.raises(InputError, match=message) as caught:
        with ShardWriter.for_store(tmp_path, 0) as writer:
            writer.append(make_record("fine", seed=4))
            writer.append(record)
    assert "broken-7" in str(caught.value) and "shard-00000.h5" in str(caught.value)
    assert list((tmp_path / "shards").iterdir()) == [], "a failed shard must leave nothing behind"


def test_text_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="'ok'.*not valid UTF-8"):
        with ShardWriter(tmp_path / "s.h5", max_boxes=K, feature_dim=D) as writer:
            writer.append(make_record("ok", seed=1), relpath="bad\udcff.jpg")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_id_in_a_shard_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="twice"):
        with ShardWriter(tmp_path / "s.h5", max_boxes=K, feature_dim=D) as writer:
            writer.append(make_record("x", seed=1))
            writer.append(make_record("x", seed=2))


def test_published_shards_are_immutable(tmp_path: Path) -> None:
    build_store(tmp_path, n_images=2, shard_size=2)
    with pytest.raises(FileExistsError):
        with ShardWriter.for_store(tmp_path, 0):
            pass


def test_store_refuses_a_shard_from_another_config(tmp_path: Path) -> None:
    init_store(tmp_path, StoreInfo(feature_dim=D, max_boxes=K, extractor={"name": "test"}, weights_sha256="aa"))
    with pytest.raises(InputError, match="weights_sha256"):
        ShardWriter(shard_path(tmp_path, 0), max_boxes=K, feature_dim=D,
                    attrs={"extractor": {"name": "test"}, "weights_sha256": "bb"}).__enter__()
    with pytest.raises(InputError, match="extractor, max_boxes"):
        init_store(tmp_path, StoreInfo(feature_dim=D, max_boxes=K + 1, extractor={"name": "other"},
                                       weights_sha256="aa"))
    assert read_store_info(tmp_path).weights_sha256 == "aa"
    assert list((tmp_path / "shards").iterdir()) == []


def test_killed_writer_leaves_no_visible_shard(tmp_path: Path) -> None:
    """A real process killed mid-shard: only its temp file remains, never shard-00000.h5."""
    init_store(tmp_path, StoreInfo(feature_dim=D, max_boxes=K, extractor={"name": "test"}))
    script = textwrap.dedent(f"""
        import os, signal
        from pipeline.store import ShardWriter
        from tests.pipeline.test_store_helpers import make_record
        with ShardWriter.for_store({str(tmp_path)!r}, 0) as writer:
            for i in range(50):
                writer.append(make_record(f"i{{i}}", seed=i))
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True)
    assert result.returncode == -signal.SIGKILL
    names = [path.name for path in (tmp_path / "shards").iterdir()]
    assert not shard_path(tmp_path, 0).exists()
    assert len(names) == 1 and names[0].startswith("shard-00000.h5.tmp-")
    build_store(tmp_path, n_images=3, shard_size=5)
    assert len(StoreReader(tmp_path)) == 3
