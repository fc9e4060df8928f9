"""Interop: files written exactly as the public tools write them go in and come out unchanged."""
from __future__ import annotations

import base64
import csv
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.store import StoreReader
from pipeline.store.interop import (AIRSPLAY_TSV_COLUMNS, CAFFE_TSV_COLUMNS, export_scan_precomp, import_records,
                                    read_butd_tsv, read_milvlg_npz, read_scan_precomp)
from tests.pipeline.test_store_helpers import D, K, assert_same_record, make_record


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array)).decode()


def _write_tsv(path: Path, records, *, airsplay: bool) -> None:
    """As generate_tsv.py (Caffe) / py-bottom-up-attention (airsplay) do: DictWriter, tab, no header."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, delimiter="\t",
                                fieldnames=AIRSPLAY_TSV_COLUMNS if airsplay else CAFFE_TSV_COLUMNS)
        for r in records:
            h, w = r.image_hw
            if airsplay:
                writer.writerow({"img_id": r.image_id, "img_h": h, "img_w": w,
                                 "objects_id": _b64(r.object_ids - 1), "objects_conf": _b64(r.object_conf),
                                 "attrs_id": _b64(r.attr_ids - 1), "attrs_conf": _b64(r.attr_conf),
                                 "num_boxes": r.num_boxes, "boxes": _b64(r.boxes), "features": _b64(r.features)})
            else:
                writer.writerow({"image_id": r.image_id, "image_w": w, "image_h": h, "num_boxes": r.num_boxes,
                                 "boxes": _b64(r.boxes), "features": _b64(r.features)})


@pytest.mark.parametrize("airsplay", [False, True])
def test_butd_tsv_round_trip(tmp_path: Path, airsplay: bool) -> None:
    records = [make_record(f"{391895 + i}", seed=i) for i in range(7)]
    _write_tsv(tmp_path / "feats.tsv", records, airsplay=airsplay)
    import_records(read_butd_tsv(tmp_path / "feats.tsv"), tmp_path / "store",
                   max_boxes=K, shard_size=3, source="feats.tsv")
    store = StoreReader(tmp_path / "store")
    assert store.image_ids == [r.image_id for r in records]
    for want in records:
        got = store.get(want.image_id)
        if airsplay:
            assert_same_record(got, want)
        else:
            np.testing.assert_array_equal(got.features, want.features)
            np.testing.assert_array_equal(got.boxes, want.boxes)
            assert got.image_hw == want.image_hw and not got.object_ids.any()


def test_tsv_with_python3_bytes_repr_and_header(tmp_path: Path) -> None:
    record = make_record("42", seed=1)
    _write_tsv(tmp_path / "f.tsv", [record], airsplay=True)
    lines = (tmp_path / "f.tsv").read_text().splitlines()
    cells = [f"b'{cell}'" if len(cell) > 20 else cell for cell in lines[0].split("\t")]
    (tmp_path / "f.tsv").write_text("\t".join(AIRSPLAY_TSV_COLUMNS) + "\n" + "\t".join(cells) + "\n")
    (got,) = list(read_butd_tsv(tmp_path / "f.tsv"))
    assert_same_record(got, record)


@pytest.mark.parametrize("damage, message", [
    (lambda cells: cells.__setitem__(5, cells[5][:-7] + "!!!!"), "line 3, column features.*invalid base64"),
    (lambda cells: cells.__setitem__(3, "9"), "line 3.*num_boxes=9 does not match"),
    (lambda cells: cells.pop(), "line 3.*5 columns"),
])
def test_damaged_tsv_line_is_named(tmp_path: Path, damage, message: str) -> None:
    _write_tsv(tmp_path / "f.tsv", [make_record(str(i), seed=i) for i in range(4)], airsplay=False)
    lines = (tmp_path / "f.tsv").read_text().splitlines()
    cells = lines[2].split("\t")
    damage(cells)
    lines[2] = "\t".join(cells)
    (tmp_path / "f.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=f"f.tsv \\({message}"):
        list(read_butd_tsv(tmp_path / "f.tsv"))


def _save_milvlg(path: Path, record, with_attrs: bool = True) -> None:
    """As MILVLG's save_roi_features: compressed npz, `info` a dict (pickled object array)."""
    info = {"image_id": record.image_id, "image_h": record.image_hw[0], "image_w": record.image_hw[1],
            "num_boxes": record.num_boxes, "objects_id": record.object_ids, "objects_conf": record.object_conf}
    if with_attrs:
        info.update(attrs_id=record.attr_ids, attrs_conf=record.attr_conf)
    np.savez_compressed(path, x=record.features, bbox=record.boxes, num_bbox=record.num_boxes,
                        image_h=record.image_hw[0], image_w=record.image_hw[1], info=info)


def test_milvlg_npz_round_trip(tmp_path: Path) -> None:
    records = [make_record(f"COCO_val2014_{i:012d}", seed=i) for i in range(4)]
    for record in records:
        _save_milvlg(tmp_path / f"{record.image_id}.npz", record)
    loaded = [read_milvlg_npz(path) for path in sorted(tmp_path.glob("*.npz"))]
    import_records(loaded, tmp_path / "store", max_boxes=K, shard_size=2)
    store = StoreReader(tmp_path / "store")
    for want in records:
        assert_same_record(store.get(want.image_id), want)
    _save_milvlg(tmp_path / "plain.npz", records[0], with_attrs=False)
    assert not read_milvlg_npz(tmp_path / "plain.npz").attr_ids.any()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_npz_with_a_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "evil.npz", x=np.zeros((1, D), np.float32), bbox=np.zeros((1, 4), np.float32), num_bbox=1,
             image_h=1, image_w=1, info=np.array(_Exploit(marker), dtype=object))
    with pytest.raises(InputError, match="evil.npz.*refusing to load"):
        read_milvlg_npz(tmp_path / "evil.npz")
    assert not marker.exists()
    with pytest.raises(InputError, match="not a readable .npz"):
        (tmp_path / "cut.npz").write_bytes((tmp_path / "evil.npz").read_bytes()[:100])
        read_milvlg_npz(tmp_path / "cut.npz")


def _precomp_ids(shared_data: Path) -> list[str]:
    rows = (shared_data / "f30k_mini" / "test_images.tsv").read_text().splitlines()[1:]
    return [row.split("\t")[3] for row in rows]


def test_scan_precomp_import_export_round_trip(tmp_path: Path, shared_data: Path) -> None:
    """Real f30k_mini ids and real SCAN captions; features generated in the precomp layout."""
    ids = _precomp_ids(shared_data)
    captions = (shared_data / "f30k_mini" / "test_caps.txt").read_text().splitlines()
    per_image = len(captions) // len(ids)
    ims = (np.random.default_rng(0).integers(-512, 512, size=(len(ids), 36, D)) / 64).astype(np.float32)
    np.save(tmp_path / "test_ims.npy", ims)
    import_records(read_scan_precomp(tmp_path / "test_ims.npy", ids), tmp_path / "store", max_boxes=36, shard_size=10)
    grouped = [captions[i * per_image:(i + 1) * per_image] for i in range(len(ids))]
    ims_path, caps_path = export_scan_precomp(tmp_path / "store", tmp_path / "out", "test", ids, grouped)
    np.testing.assert_array_equal(np.load(ims_path), ims)
    assert caps_path.read_text().splitlines() == captions
    assert StoreReader(tmp_path / "store").get(ids[3]).image_hw == (0, 0)
    assert [r.image_id for r in read_scan_precomp(tmp_path / "test_ims.npy")][:2] == ["0", "1"]


def test_precomp_export_refuses_uneven_captions(tmp_path: Path) -> None:
    import_records([make_record("a", 1), make_record("b", 2)], tmp_path / "store", max_boxes=K)
    with pytest.raises(ValueError, match="same, non-zero number of captions"):
        export_scan_precomp(tmp_path / "store", tmp_path / "out", "dev", ["a", "b"], [["x"], ["y", "z"]])
    with pytest.raises(InputError, match="2 images but 1 image ids"):
        np.save(tmp_path / "dev_ims.npy", np.zeros((2, 3, D), np.float32))
        list(read_scan_precomp(tmp_path / "dev_ims.npy", ["only-one"]))
