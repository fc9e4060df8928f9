"""`int8_calibration`: res5 in int8 on ONNX Runtime, calibrated on given photos, and the store's identity of it."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extractors.calibration import calibration_digest, calibration_photos
from extractors.config import RUNTIME_FIELDS, ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import InProcessRunner, RunConfig, extract_dataset
from extractors.loader import images_in_directory
from extractors.preprocess import collate_images, prepare_image
from extractors.quality import compare_runs
from pipeline.errors import InputError
from pipeline.store import StoreConfig, verify_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FLOAT32 = ExtractorConfig(backbone="R18-C4-demo", device="cpu", rpn_post_nms_topk=40, min_boxes=5, max_boxes=10,
                          runtime="onnxruntime")
MEASURED = ("004545.jpg", "example_image.jpg")


@pytest.fixture()
def calibration(shared_data, tmp_path) -> Path:
    """A folder with one calibration photo, not one of the measured ones."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    shutil.copy(shared_data / "butd_demo_images" / "000456.jpg", folder / "000456.jpg")
    return folder


def _batches(shared_data, config: ExtractorConfig) -> list:
    return [collate_images([prepare_image(np.asarray(Image.open(shared_data / "butd_demo_images" / name)
                                                     .convert("RGB")), config)]) for name in MEASURED]


def _cosines(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    return (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)


def test_int8_res5_keeps_the_regions_and_features_of_float32_to_int8_rounding(shared_data, calibration) -> None:
    int8 = dataclasses.replace(FLOAT32, int8_calibration=str(calibration))
    float_detector, int8_detector = build_detector(FLOAT32), build_detector(int8)
    batches = _batches(shared_data, FLOAT32)
    reference = [region for batch in batches for region in float_detector(batch)]
    quantized = [region for batch in batches for region in int8_detector(batch)]
    agreement = compare_runs(reference, quantized)
    assert agreement.boxes >= 10 and agreement.matched_fraction == 1.0 and agreement.min_cosine > 0.999
    given = [np.array([[0, 0, 50, 60], [10, 20, 200, 150], [30, 40, 90, 300]], dtype=np.float32)]
    ours = int8_detector(batches[0], given_boxes=given)[0].features
    theirs = float_detector(batches[0], given_boxes=given)[0].features
    cosines = _cosines(ours, theirs)
    assert cosines.min() > 0.999
    assert cosines.min() < 1 - 1e-7, "res5 ran in float32: the features equal float32's"


def test_int8_calibration_is_deterministic_in_another_process(shared_data, calibration, tmp_path) -> None:
    """Every worker calibrates on its own, so the same photos must give the same features in any process."""
    config = dataclasses.replace(FLOAT32, int8_calibration=str(calibration))
    batch = _batches(shared_data, config)[0]
    here = build_detector(config)(batch)[0].features
    script = (
        "import sys, numpy as np, torch; torch.set_num_threads(1)\n"
        "from PIL import Image\n"
        "from extractors.config import ExtractorConfig\n"
        "from extractors.detector import build_detector\n"
        "from extractors.preprocess import collate_images, prepare_image\n"
        "config = ExtractorConfig(backbone='R18-C4-demo', device='cpu', rpn_post_nms_topk=40, min_boxes=5,\n"
        "                         max_boxes=10, runtime='onnxruntime', int8_calibration=sys.argv[1])\n"
        "image = np.asarray(Image.open(sys.argv[2]).convert('RGB'))\n"
        "np.save(sys.argv[3], build_detector(config)(collate_images([prepare_image(image, config)]))[0].features)\n")
    out = tmp_path / "there.npy"
    subprocess.run([sys.executable, "-c", script, str(calibration), str(shared_data / "butd_demo_images" /
                                                                         MEASURED[0]), str(out)],
                   check=True, cwd=Path(__file__).resolve().parents[2])
    np.testing.assert_array_equal(np.load(out), here)


def test_other_calibration_photos_give_other_ranges(shared_data, calibration, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(shared_data / "butd_demo_images" / "001150.jpg", other / "001150.jpg")
    batch = _batches(shared_data, FLOAT32)[0]
    boxes = [np.array([[0, 0, 50, 60], [10, 20, 200, 150]], dtype=np.float32)]
    first, second = (build_detector(dataclasses.replace(FLOAT32, int8_calibration=str(folder)))(
        batch, given_boxes=boxes)[0].features for folder in (calibration, other))
    assert not np.array_equal(first, second)


def test_loading_weights_after_a_run_calibrates_again(shared_data, calibration) -> None:
    config = dataclasses.replace(FLOAT32, int8_calibration=str(calibration))
    batch = _batches(shared_data, config)[0]
    boxes = [np.array([[0, 0, 50, 60], [10, 20, 200, 150]], dtype=np.float32)]
    detector = build_detector(config)
    detector(batch, given_boxes=boxes)
    detector.load_state_dict(build_detector(dataclasses.replace(FLOAT32, seed=1)).state_dict())
    fresh = build_detector(dataclasses.replace(config, seed=1))
    np.testing.assert_array_equal(detector(batch, given_boxes=boxes)[0].features,
                                  fresh(batch, given_boxes=boxes)[0].features)


def test_the_store_key_has_the_photos_by_content_and_float32_stores_keep_theirs(calibration, tmp_path) -> None:
    assert "int8_calibration" in RUNTIME_FIELDS
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(next(calibration.iterdir()), moved / "renamed.jpg")
    int8 = dataclasses.replace(FLOAT32, int8_calibration=str(calibration))
    assert int8.feature_settings() == dict(FLOAT32.feature_settings(),
                                           int8_calibration_sha256=calibration_digest(calibration))
    assert dataclasses.replace(int8, int8_calibration=str(moved)).feature_settings() == int8.feature_settings()
    assert "int8_calibration_sha256" not in FLOAT32.feature_settings()
    (moved / "second.png").write_bytes((calibration / "000456.jpg").read_bytes()[:-1] + b"\0")
    assert calibration_digest(moved) != calibration_digest(calibration)
    assert [path.name for path in calibration_photos(moved)] == ["renamed.jpg", "second.png"]


def test_an_int8_store_never_takes_float32_shards(shared_data, calibration, tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in MEASURED:
        shutil.copy(shared_data / "butd_demo_images" / name, images / name)
    files, store, run = images_in_directory(images), tmp_path / "store", RunConfig(num_workers=0)

    def extract(config: ExtractorConfig):
        return extract_dataset(files, store, config, store=StoreConfig(), run=run, progress=False,
                               runner=InProcessRunner(config, run, progress=False))

    int8 = dataclasses.replace(FLOAT32, int8_calibration=str(calibration))
    assert extract(int8).extracted == 2
    recorded = json.loads((store / "store.json").read_text())["extractor"]
    assert recorded["int8_calibration_sha256"] == calibration_digest(calibration)
    assert verify_store(store) == []
    with pytest.raises(InputError, match="different extractor"):
        extract(FLOAT32)


def test_int8_needs_onnxruntime_and_a_folder_of_photos(tmp_path) -> None:
    with pytest.raises(ValueError, match="add runtime='onnxruntime'"):
        dataclasses.replace(FLOAT32, runtime="torch", int8_calibration=str(tmp_path))
    with pytest.raises(InputError, match=f"{tmp_path / 'absent'}: int8 calibration: not a folder of photos"):
        dataclasses.replace(FLOAT32, int8_calibration=str(tmp_path / "absent")).feature_settings()
    (tmp_path / "notes.txt").write_text("not a photo")
    batch = collate_images([prepare_image(np.zeros((64, 64, 3), np.uint8), FLOAT32)])
    with pytest.raises(InputError, match=f"{tmp_path}: int8 calibration: no photos"):
        build_detector(dataclasses.replace(FLOAT32, int8_calibration=str(tmp_path)))(batch)
    (tmp_path / "saved-error-page.jpg").write_text("<html>not found</html>")
    with pytest.raises(InputError, match="saved-error-page.jpg"):
        build_detector(dataclasses.replace(FLOAT32, int8_calibration=str(tmp_path)))(batch)
