"""The extraction driver end to end: real photos -> real R18 detector -> real HDF5 store."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import InProcessRunner, RunConfig, extract_dataset, load_boxes_json
from extractors.images import BadImageError
from extractors.loader import images_in_directory
from extractors.weights import write_published
from pipeline.errors import InputError
from pipeline.store import StoreReader, StoreConfig, verify_store

REPO_ROOT = Path(__file__).resolve().parents[2]
# Few proposals: the res5 box head runs once per proposal and dominates CPU time.
CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu", batch_size=2, min_boxes=2, max_boxes=4,
                                    rpn_pre_nms_topk=100, rpn_post_nms_topk=4)
RUN = RunConfig(num_workers=0)


@pytest.fixture(scope="module")
def detector():
    return build_detector(CONFIG)


def _photos(shared_data: Path, folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted((shared_data / "flickr8k" / "images").glob("*.jpg"))[:count]:
        shutil.copy(photo, folder / photo.name)
    return folder


def _extract(images_dir: Path, store: Path, detector, *, shard_size: int = 3, run: RunConfig = RUN, **options):
    runner = InProcessRunner(CONFIG, run, detector=detector, progress=False)
    return extract_dataset(images_in_directory(images_dir), store, CONFIG, store=StoreConfig(shard_size=shard_size),
                           run=run, runner=runner, progress=False, **options)


def _features_by_image(store: Path) -> dict[str, bytes]:
    """image id -> raw bytes of its stored rows (features, boxes, labels), for byte-equality checks."""
    found = {}
    for shard in sorted((store / "shards").glob("shard-*.h5")):
        with h5py.File(shard, "r") as handle:
            for row, image_id in enumerate(handle["image_ids"].asstr()[()]):
                found[image_id] = b"".join(handle[name][row].tobytes() for name in
                                           ("features", "boxes", "num_boxes", "object_ids", "attr_ids", "object_conf"))
    return found


def test_store_holds_every_readable_photo_and_names_the_bad_ones(shared_data, tmp_path, detector) -> None:
    images = _photos(shared_data, tmp_path / "images", 3)
    # Sorted between the photos, so both shards mix good and bad images: [photo, html, photo], [cut, photo].
    (images / "1001-error-page.jpg").write_bytes(b"<html><body>404</body></html>")
    whole = (images / "1000268201_693b08cb0e.jpg").read_bytes()
    (images / "1002-truncated.jpg").write_bytes(whole[: len(whole) // 3])
    summary = _extract(images, tmp_path / "store", detector, run=RunConfig(num_workers=2))
    assert (summary.extracted, summary.skipped, summary.failed, summary.shards_written) == (3, 0, 2, 2)
    assert "3 extracted, 0 skipped (already stored), 2 failed" in str(summary)
    assert verify_store(tmp_path / "store") == []
    failures = pq.read_table(tmp_path / "store" / "failures.parquet").to_pydict()
    reasons = dict(zip(failures["image_id"], failures["reason"]))
    assert set(reasons) == {"1001-error-page", "1002-truncated"}
    assert "HTML" in reasons["1001-error-page"] and "truncated" in reasons["1002-truncated"]
    store = StoreReader(tmp_path / "store")
    assert len(store) == 3 and store.info.feature_dim == 512 and store.info.max_boxes == 4
    assert store.info.extractor["backbone"] == "R18-C4-demo" and store.info.weights_sha256 == ""
    with h5py.File(tmp_path / "store" / "shards" / "shard-00000.h5", "r") as handle:
        assert list(handle["image_ids"].asstr()[()]) == ["1000268201_693b08cb0e", "1001773457_577c3a7d70"]
        assert (handle["num_boxes"][()] >= 2).all() and (handle["num_boxes"][()] <= 4).all()
        assert tuple(handle["image_hw"][0]) == (200, 150)  # Flickr 1000268201: 150 wide, 200 high


def test_shard_of_only_unreadable_images_is_recorded(tmp_path, detector) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "empty.jpg").write_bytes(b"")
    summary = _extract(images, tmp_path / "store", detector)
    assert (summary.extracted, summary.failed, summary.shards_written) == (0, 1, 1)
    assert pq.read_table(tmp_path / "store" / "failures.parquet").column("image_id").to_pylist() == ["empty"]


def test_fail_fast_stops_at_the_first_bad_image_keeping_finished_shards(shared_data, tmp_path, detector) -> None:
    images = _photos(shared_data, tmp_path / "images", 4)
    (images / "1003163366_44323f5815.jpg").write_bytes(b"")  # third image, in the second shard of 2
    with pytest.raises(BadImageError, match="empty file"):
        _extract(images, tmp_path / "store", detector, shard_size=2, run=RunConfig(num_workers=0, fail_fast=True))
    assert sorted(path.name for path in (tmp_path / "store" / "shards").iterdir()) == ["shard-00000.h5"]


def test_rerun_touches_only_new_and_changed_images(shared_data, tmp_path, detector) -> None:
    images = _photos(shared_data, tmp_path / "images", 3)
    store = tmp_path / "store"
    _extract(images, store, detector, shard_size=2)
    first = {path.name: path.stat().st_mtime_ns for path in (store / "shards").iterdir()}
    before = _features_by_image(store)
    again = _extract(images, store, detector, shard_size=2)
    assert (again.extracted, again.skipped, again.shards_written) == (0, 3, 0)
    newcomer = sorted((shared_data / "flickr8k" / "images").glob("*.jpg"))[7]
    shutil.copy(newcomer, images / newcomer.name)
    shutil.copy(images / "1000268201_693b08cb0e.jpg", images / "1001773457_577c3a7d70.jpg")  # content changed
    third = _extract(images, store, detector, shard_size=2)
    assert (third.extracted, third.skipped, third.shards_written) == (2, 2, 1)
    assert {path.name: path.stat().st_mtime_ns for path in (store / "shards").iterdir() if path.name in first} == first
    after = _features_by_image(tmp_path / "store")
    assert after["1001773457_577c3a7d70"] != before["1001773457_577c3a7d70"]
    manifest = pq.read_table(store / "manifest.parquet").to_pydict()
    assert (len(manifest["image_id"]) == 4
            and dict(zip(manifest["image_id"], manifest["shard"]))["1001773457_577c3a7d70"] == 2)
    assert verify_store(store) == []


def test_given_boxes_mode_keeps_exactly_the_given_boxes(shared_data, tmp_path, detector) -> None:
    images = _photos(shared_data, tmp_path / "images", 2)
    given = {"1000268201_693b08cb0e": [[0, 0, 100, 75], [50, 40, 199, 149]],
             "1001773457_577c3a7d70": [[10, 10, 60, 90]]}
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(given))
    _extract(images, tmp_path / "store", detector, boxes=load_boxes_json(boxes_file))
    with h5py.File(tmp_path / "store" / "shards" / "shard-00000.h5", "r") as handle:
        np.testing.assert_array_equal(handle["num_boxes"][()], [2, 1])
        np.testing.assert_allclose(handle["boxes"][0, :2], given["1000268201_693b08cb0e"], atol=1e-3)
        assert np.abs(handle["features"][0, :2]).sum() > 0 and not handle["features"][0, 2:].any()
    assert StoreReader(tmp_path / "store").info.extractor["given_boxes"] is True


def test_given_boxes_store_grows_and_re_extracts_an_image_whose_boxes_changed(shared_data, tmp_path, detector) -> None:
    images = _photos(shared_data, tmp_path / "images", 3)
    first, second, later = sorted(images.iterdir())
    later.rename(tmp_path / later.name)  # added to the image set after the first run
    boxes = {first.stem: [[0, 0, 100, 75]], second.stem: [[10, 10, 60, 90]]}
    _extract(images, tmp_path / "store", detector, boxes=load_boxes_json(_write_json(tmp_path / "b1.json", boxes)))
    shard0 = (tmp_path / "store" / "shards" / "shard-00000.h5").read_bytes()
    (tmp_path / later.name).rename(later)
    boxes.update({later.stem: [[5, 5, 50, 50]], second.stem: [[20, 20, 80, 90]]})
    summary = _extract(images, tmp_path / "store", detector,
                       boxes=load_boxes_json(_write_json(tmp_path / "b2.json", boxes)))
    assert (summary.extracted, summary.skipped) == (2, 1)  # the new image, and the one whose boxes changed
    assert (tmp_path / "store" / "shards" / "shard-00000.h5").read_bytes() == shard0
    assert StoreReader(tmp_path / "store").get(second.stem).boxes[0].tolist() == [20, 20, 80, 90]


def test_given_boxes_beyond_max_boxes_fail_that_image_only(shared_data, tmp_path, detector) -> None:
    images = _photos(shared_data, tmp_path / "images", 2)
    first, second = (path.stem for path in sorted(images.iterdir()))
    boxes = {first: [[0, 0, 10, 10]] * (CONFIG.max_boxes + 1), second: [[10, 10, 60, 90]]}
    summary = _extract(images, tmp_path / "store", detector,
                       boxes=load_boxes_json(_write_json(tmp_path / "b.json", boxes)))
    assert summary.extracted == 1 and summary.failures == ((first, "5 given boxes, more than max_boxes=4"),)


def _write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "expected an object"),
    ('{"a": [[0, 0, 5]]}', "key 'a'"),
    ('{"a": [[5, 5, 1, 1]]}', "x1 < x2"),
    ('{"a": []}', "non-empty"),
    ("{not json", "cannot read boxes JSON"),
])
def test_bad_boxes_files_are_refused(tmp_path, content, problem) -> None:
    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(InputError, match=problem):
        load_boxes_json(path)


def _cli(images: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "extractors", "extract", "--images", str(images), "--store", str(store),
            "--backbone", "R18-C4-demo", "--device", "cpu", "--batch-size", "2", "--min-boxes", "2", "--max-boxes", "4",
            "--rpn-pre-nms-topk", "100", "--rpn-post-nms-topk", "4",
            "--workers", "0", "--torch-threads", "1", "--no-progress", *extra]


@pytest.mark.slow
def test_killed_run_resumes_to_an_identical_store(shared_data, tmp_path, detector) -> None:
    images = _photos(shared_data, tmp_path / "images", 3)
    # Bits are reproducible for a given thread count; pin it in both processes.
    _extract(images, tmp_path / "reference", detector, shard_size=1, run=RunConfig(num_workers=0, torch_threads=1))
    store = tmp_path / "store"
    process = subprocess.Popen(_cli(images, store, "--shard-size", "1"), cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        names = os.listdir(store / "shards") if (store / "shards").is_dir() else []
        if "shard-00001.h5" in names and any(".tmp-" in name for name in names):
            break
        time.sleep(0.005)
    assert process.poll() is None, f"extraction ended before it could be killed: {process.stderr.read().decode()}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (store / "manifest.parquet").exists()
    resumed = subprocess.run(_cli(images, store, "--shard-size", "1"), cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped (already stored)" in resumed.stdout
    assert _features_by_image(store) == _features_by_image(tmp_path / "reference")
    assert not [name for name in os.listdir(store / "shards") if ".tmp-" in name]  # the killed write's temp file
    assert verify_store(store) == []
    assert pq.read_table(store / "manifest.parquet").equals(pq.read_table(tmp_path / "reference" / "manifest.parquet"))


def test_cli_extract_then_verify(shared_data, tmp_path) -> None:
    images = _photos(shared_data, tmp_path / "images", 3)
    (images / "zz.jpg").write_bytes(b"")
    from extractors.__main__ import main
    assert main(_cli(images, tmp_path / "store", "--shard-size", "2")[3:]) == 0
    assert main(["verify", "--store", str(tmp_path / "store")]) == 0
    with h5py.File(tmp_path / "store" / "shards" / "shard-00000.h5", "r+") as handle:
        handle["features"][0, 0, 0] = np.nan
    assert main(["verify", "--store", str(tmp_path / "store")]) == 1


def test_cli_extracts_a_registered_dataset_in_its_order(shared_data, tmp_path, detector, capsys) -> None:
    source = json.loads((shared_data / "f30k_mini" / "dataset_flickr30k_subset.json").read_text())
    chosen = [entry for entry in source["images"] if entry["split"] == "test"][:3]
    (tmp_path / "f30k").mkdir()
    (tmp_path / "f30k" / "images").symlink_to(shared_data / "f30k_mini" / "images")
    (tmp_path / "f30k" / "dataset_flickr30k.json").write_text(json.dumps({**source, "images": chosen}))
    from extractors.__main__ import main
    argv = _cli(tmp_path, tmp_path / "store")[3:]
    argv[argv.index("--images"):argv.index("--images") + 2] = ["--dataset", "f30k", "--data-root", str(tmp_path)]
    assert main(argv) == 2  # a real dataset is never described by a randomly initialised detector
    assert "--weights" in capsys.readouterr().err and not (tmp_path / "store").exists()
    weights = tmp_path / "weights.pkl"
    write_published(detector.state_dict(), weights, "airsplay", CONFIG.spec)
    assert main([*argv, "--weights", str(weights)]) == 0
    manifest = pq.read_table(tmp_path / "store" / "manifest.parquet").to_pydict()
    assert manifest["relpath"] == [entry["filename"] for entry in chosen]


def test_image_without_any_region_is_a_failure_not_a_stop(shared_data, tmp_path, detector) -> None:
    images = _photos(shared_data, tmp_path / "images", 1)
    Image.new("RGB", (1, 1), (90, 120, 30)).save(images / "1000268201_b-one-pixel.png")  # same shard as the photo
    summary = _extract(images, tmp_path / "store", detector)
    assert (summary.extracted, summary.failed) == (1, 1)
    assert summary.failures == (("1000268201_b-one-pixel", "the detector found no region in this 1x1 image"),)
    assert verify_store(tmp_path / "store") == []
