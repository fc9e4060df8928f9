"""Damaged feature files: shards, manifests, store.json, BUTD TSV, MILVLG .npz, SCAN precomp .npy.

Readers must raise InputError naming the file (and the line / image) and the problem; verify_store
must list the damage with a fix; a refused write must leave the published shards untouched.
"""
from __future__ import annotations

import base64
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.store import StoreReader, ShardWriter, commit_manifest, plan_shards, verify_store
from pipeline.store.interop import read_butd_tsv, read_milvlg_npz, read_scan_precomp
from tests.reliability.workspace_builder import build_store, region_record


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return build_store(tmp_path / "store", n_images=4, shard_size=2)


def _shard(store: Path, index: int = 0) -> Path:
    return store / "shards" / f"shard-{index:05d}.h5"


def _problems(store: Path) -> str:
    return "\n".join(str(problem) for problem in verify_store(store))


@pytest.mark.parametrize("keep", [0, 512, 2048, -100])
def test_truncated_shard_is_reported_by_verify_reader_and_planner(store, keep) -> None:
    shard = _shard(store, 1)
    data = shard.read_bytes()
    shard.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    assert "shard-00001.h5" in _problems(store)
    with pytest.raises(InputError) as raised:
        StoreReader(store).read([2, 3])
    assert raised.value.path.endswith("shard-00001.h5")
    with pytest.raises(InputError, match="shard-00001.h5"):
        plan_shards([("img9", "img9.jpg", "")], store, 2)


def test_random_bytes_as_shard(store) -> None:
    _shard(store, 0).write_bytes(np.random.default_rng(0).bytes(4096))
    assert "cannot be read as HDF5" in _problems(store)


@pytest.mark.parametrize("name, replacement, expected", [
    ("features", np.zeros((2, 4, 8), np.float64), "dataset 'features' is (2, 4, 8) float64"),
    ("features", np.zeros((2, 3, 8), np.float32), "dataset 'features' is (2, 3, 8)"),
    ("boxes", np.zeros((2, 4), np.float32), "dataset 'boxes' is (2, 4)"),
    ("num_boxes", np.array([0, 9], np.int32), "num_boxes outside 1..4"),
    ("image_ids", None, "dataset 'image_ids' is missing"),
])
def test_wrong_shapes_dtypes_and_values_in_a_shard(store, name, replacement, expected) -> None:
    with h5py.File(_shard(store), "r+") as handle:
        del handle[name]
        if replacement is not None:
            handle.create_dataset(name, data=replacement)
    assert expected in _problems(store)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_features_are_refused_on_write_and_found_on_disk(store, value) -> None:
    record = region_record("bad", np.random.default_rng(1))
    record.features[1, 2] = value
    before = {path.name: path.read_bytes() for path in (store / "shards").iterdir()}
    with pytest.raises(InputError, match="features contain NaN or Inf") as raised:
        with ShardWriter.for_store(store, 2) as writer:
            writer.append(region_record("fine", np.random.default_rng(2)))
            writer.append(record)
    assert raised.value.location == "image 'bad'"
    assert {path.name: path.read_bytes()
            for path in (store / "shards").iterdir()} == before  # nothing published or left
    with h5py.File(_shard(store), "r+") as handle:
        handle["features"][1, 0, 0] = value
    assert "image 'img1' (row 1) contain NaN or Inf" in _problems(store)


@pytest.mark.parametrize("change, expected", [
    (lambda r: setattr(r, "features", r.features[:, :5]), "features have shape (3, 5); expected (1..4, 8)"),
    (lambda r: setattr(r, "features", np.zeros((6, 8), np.float32)), "features have shape (6, 8)"),
    (lambda r: setattr(r, "features", np.zeros(8, np.float32)), "features have shape (8,)"),
    (lambda r: setattr(r, "features", r.features.astype(np.int32)), "expected a float dtype"),
    (lambda r: setattr(r, "boxes", r.boxes[:, :3]), "boxes has shape (3, 3); expected (3, 4)"),
    (lambda r: setattr(r, "object_ids", r.object_ids[:2]), "object_ids has shape (2,)"),
    (lambda r: setattr(r, "attr_conf", np.full(3, np.nan, np.float32)), "attr_conf contain NaN or Inf"),
    (lambda r: setattr(r, "image_hw", (5,)), "image_hw=(5,)"),
    (lambda r: setattr(r, "image_id", ""), "image_id must be a non-empty string"),
    (lambda r: setattr(r, "image_id", "bad\udcff"), "is not valid UTF-8 text"),
    (lambda r: setattr(r, "image_id", "img0"), "appears twice in this shard"),
])
def test_malformed_records_are_refused_and_nothing_is_published(store, change, expected) -> None:
    record = region_record("new", np.random.default_rng(3))
    change(record)
    with pytest.raises(InputError, match=None) as raised:
        with ShardWriter.for_store(store, 2) as writer:
            writer.append(region_record("img0", np.random.default_rng(4)))
            writer.append(record)
    assert expected in raised.value.problem and raised.value.path.endswith("shard-00002.h5")
    assert sorted(path.name for path in (store / "shards").iterdir()) == ["shard-00000.h5", "shard-00001.h5"]
    assert verify_store(store) == []


def _rewrite_manifest(store: Path, change) -> None:
    table = pq.read_table(store / "manifest.parquet").to_pydict()
    change(table)
    pq.write_table(pa.table(table, schema=pq.read_schema(store / "manifest.parquet")), store / "manifest.parquet")


@pytest.mark.parametrize("change, expected", [
    (lambda t: t["row"].__setitem__(0, 7), "rows outside shard 0"),
    (lambda t: t["image_id"].__setitem__(0, "other"), "entry 0 says ('other'"),
    (lambda t: t["shard"].__setitem__(3, 5), "point to shard 5, which is missing"),
    (lambda t: t["image_id"].__setitem__(1, "img0"), "lists an image id more than once"),
    (lambda t: t["num_boxes"].__setitem__(2, 4), "entry 2 says"),
])
def test_manifest_that_disagrees_with_the_shards(store, change, expected) -> None:
    _rewrite_manifest(store, change)
    assert expected in _problems(store)


def test_stale_unreadable_or_foreign_manifest_and_store_json(store) -> None:
    with ShardWriter.for_store(store, 2) as writer:  # a newer attempt at img1 after the manifest
        writer.append(region_record("img1", np.random.default_rng(5)))
    assert "stale: image 'img1' has a newer row in shard 2" in _problems(store)
    commit_manifest(store)
    assert verify_store(store) == []
    pq.write_table(pa.table({"x": [1]}), store / "manifest.parquet")
    assert "unexpected columns ['x']" in _problems(store)
    (store / "manifest.parquet").write_bytes(b"PAR1 not really")
    assert "manifest.parquet: unreadable" in _problems(store)
    with pytest.raises(InputError, match="unreadable manifest"):
        StoreReader(store)
    (store / "store.json").write_text('{"feature_dim": "eight"')
    with pytest.raises(InputError, match="store.json: not a valid store description"):
        StoreReader(store)
    assert "not a valid store description" in _problems(store)


# ---------------------------------------------------------------- BUTD TSV


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


def _caffe_row(image_id: str = "1", k: int = 2, d: int = 8, **cells: str) -> str:
    row = {"image_id": image_id, "image_w": "10", "image_h": "10", "num_boxes": str(k),
           "boxes": _b64(np.ones((k, 4), np.float32)), "features": _b64(np.ones((k, d), np.float32))}
    row.update(cells)
    return "\t".join(row.values())


TSV_ERRORS = {
    "bad base64": (_caffe_row(features="AAAA!!!!"), "invalid base64", "line 2, column features"),
    "bad padding": (_caffe_row(boxes="AAA"), "invalid base64", "line 2, column boxes"),
    "partial float": (_caffe_row(features=base64.b64encode(b"\0" * 6).decode()), "not a whole number of float32",
                      "line 2, column features"),
    "num_boxes not a number": (_caffe_row(num_boxes="two"), "not an integer", "line 2"),
    "num_boxes disagrees": (_caffe_row(num_boxes="3"), "num_boxes=3 does not match", "line 2"),
    "zero boxes": (_caffe_row(num_boxes="0"), "num_boxes=0", "line 2"),
    "too few columns": ("1\t10\t10\t2", "4 columns", "line 2"),
}


@pytest.mark.parametrize("case", sorted(TSV_ERRORS))
def test_butd_tsv_errors_name_line_and_column(tmp_path, case) -> None:
    row, problem, location = TSV_ERRORS[case]
    path = tmp_path / "features.tsv"
    path.write_text(_caffe_row("0") + "\n" + row + "\n")
    with pytest.raises(InputError) as raised:
        list(read_butd_tsv(path))
    assert (raised.value.path, raised.value.location) == (str(path), location)
    assert problem in raised.value.problem


# ---------------------------------------------------------------- MILVLG .npz and SCAN precomp .npy


def _npz(path: Path, **entries) -> Path:
    np.savez(path, **entries)
    return path


def test_milvlg_npz_damage(tmp_path) -> None:
    good = dict(x=np.ones((2, 8), np.float32), bbox=np.ones((2, 4), np.float32), num_bbox=2, image_h=5, image_w=5,
                info={"image_id": "7"})
    assert read_milvlg_npz(_npz(tmp_path / "good.npz", **good)).image_id == "7"
    cases = {
        "missing": ({key: value for key, value in good.items() if key != "x"}, "missing entries ['x']"),
        "info": ({**good, "info": np.arange(3)}, "entry 'info' is ndarray"),
        "shape": ({**good, "num_bbox": 3}, "x has shape (2, 8) but num_bbox=3"),
    }
    for name, (entries, problem) in cases.items():
        with pytest.raises(InputError, match=problem.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            read_milvlg_npz(_npz(tmp_path / f"{name}.npz", **entries))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable .npz archive"):
        read_milvlg_npz(tmp_path / "cut.npz")


def test_scan_precomp_damage(tmp_path) -> None:
    np.save(tmp_path / "flat_ims.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(InputError, match=r"shape \(3, 8\); expected"):
        list(read_scan_precomp(tmp_path / "flat_ims.npy"))
    np.save(tmp_path / "objects_ims.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable .npy"):
        list(read_scan_precomp(tmp_path / "objects_ims.npy"))
    np.save(tmp_path / "good_ims.npy", np.ones((4, 2, 8), np.float32))
    data = (tmp_path / "good_ims.npy").read_bytes()
    (tmp_path / "cut_ims.npy").write_bytes(data[:200])
    with pytest.raises(InputError, match="not a readable .npy"):
        list(read_scan_precomp(tmp_path / "cut_ims.npy"))
    with pytest.raises(InputError, match="4 images but 2 image ids"):
        list(read_scan_precomp(tmp_path / "good_ims.npy", ["a", "b"]))
