"""`runtime=onnxruntime`: the ResNet body and res5 on ONNX Runtime give PyTorch's regions, to float32 rounding."""
from __future__ import annotations

import dataclasses
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from extractors.backbone import ResNetC4
from extractors.config import PRESETS, RUNTIME_FIELDS, ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import SHARD_RUN_ATTR, InProcessRunner, RunConfig, extract_dataset
from extractors.loader import images_in_directory
from extractors.preprocess import collate_images, prepare_image
from pipeline.store import StoreConfig, verify_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu", rpn_post_nms_topk=40, min_boxes=5, max_boxes=10)
PHOTOS = ("000456.jpg", "004545.jpg", "example_image.jpg")  # three different aspect ratios


def _photos(shared_data, config: ExtractorConfig) -> list:
    return [prepare_image(np.asarray(Image.open(shared_data / "butd_demo_images" / name).convert("RGB")), config)
            for name in PHOTOS]


def _assert_same_regions(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        for name in ("object_ids", "attr_ids"):
            np.testing.assert_array_equal(getattr(mine, name), getattr(reference, name))
        np.testing.assert_allclose(mine.boxes, reference.boxes, rtol=1e-5, atol=1e-2)
        for name in ("features", "object_conf", "attr_conf"):
            np.testing.assert_allclose(getattr(mine, name), getattr(reference, name), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("recipe", ["caffe", "airsplay"])
def test_onnxruntime_gives_the_regions_of_pytorch_alone_and_in_a_padded_batch(shared_data, recipe: str) -> None:
    config = dataclasses.replace(CONFIG, recipe=recipe)
    photos = _photos(shared_data, config)
    torch_detector = build_detector(config)
    onnx_detector = build_detector(dataclasses.replace(config, runtime="onnxruntime"))
    alone = [region for photo in photos for region in torch_detector(collate_images([photo]))]
    _assert_same_regions([region for photo in photos for region in onnx_detector(collate_images([photo]))], alone)
    _assert_same_regions(onnx_detector(collate_images(photos)), alone)  # zero-padded to the largest photo


def test_onnxruntime_describes_given_boxes_as_pytorch_does(shared_data) -> None:
    photo = _photos(shared_data, CONFIG)[0]
    boxes = [np.array([[0, 0, 50, 60], [10, 20, 200, 150], [5, 5, 5, 5]], dtype=np.float32)]
    reference = build_detector(CONFIG)(collate_images([photo]), given_boxes=boxes)
    ours = build_detector(dataclasses.replace(CONFIG, runtime="onnxruntime"))(collate_images([photo]),
                                                                               given_boxes=boxes)
    np.testing.assert_array_equal(ours[0].boxes, reference[0].boxes)
    np.testing.assert_allclose(ours[0].features, reference[0].features, rtol=1e-4, atol=1e-4)


def test_loading_weights_after_a_run_exports_them_again(shared_data) -> None:
    """Sessions are made from the weights at the first forward; stale ones must never run the old weights."""
    batch = collate_images(_photos(shared_data, CONFIG)[:1])
    detector = build_detector(dataclasses.replace(CONFIG, runtime="onnxruntime"))
    before = detector(batch)
    other = build_detector(dataclasses.replace(CONFIG, seed=1))
    detector.load_state_dict(other.state_dict())
    after = detector(batch)
    _assert_same_regions(after, other(batch))
    assert not np.allclose(after[0].features[:1], before[0].features[:1])


def test_onnxruntime_runs_float32_on_the_cpu_and_is_not_part_of_the_store_identity() -> None:
    assert "runtime" in RUNTIME_FIELDS
    onnx = dataclasses.replace(CONFIG, runtime="onnxruntime")
    assert onnx.feature_settings() == CONFIG.feature_settings()
    assert dataclasses.replace(CONFIG, runtime="onnxruntime", amp_dtype="auto").amp_dtype == ""
    with pytest.raises(ValueError, match="runtime='onnxruntime' runs in float32, not amp_dtype='bf16'"):
        dataclasses.replace(CONFIG, runtime="onnxruntime", amp_dtype="bf16")
    with pytest.raises(ValueError, match="runtime='tensorrt'; expected one of torch, onnxruntime"):
        dataclasses.replace(CONFIG, runtime="tensorrt")


@pytest.mark.parametrize("backbone", ["R18-C4-demo", "R101-C4-VG"])
def test_output_sizes_are_the_sizes_the_body_returns(backbone: str) -> None:
    body = ResNetC4(PRESETS[backbone]).eval()
    sizes = [(33, 47), (64, 64), (17, 90)]
    images = torch.zeros(len(sizes), 3, 64, 90)
    with torch.inference_mode():
        features, returned = body(images, sizes)
    assert body.output_sizes(sizes) == returned
    assert body.output_sizes([(64, 90)]) == [tuple(features.shape[2:])]


def test_one_store_takes_shards_of_both_runtimes_and_each_shard_says_which(shared_data, tmp_path) -> None:
    """The runtime is not part of the store's identity (the same regions), and each shard records how it was made."""
    images = tmp_path / "images"
    images.mkdir()
    run = RunConfig(num_workers=0)
    for runtime, photo in (("torch", "000456.jpg"), ("onnxruntime", "004545.jpg")):
        shutil.copy(shared_data / "butd_demo_images" / photo, images / photo)
        config = dataclasses.replace(CONFIG, runtime=runtime)
        runner = InProcessRunner(config, run, detector=build_detector(config), progress=False)
        summary = extract_dataset(images_in_directory(images), tmp_path / "store", config,
                                  store=StoreConfig(shard_size=1), run=run, runner=runner, progress=False)
        assert summary.extracted == 1
    made_by = []
    for shard in sorted((tmp_path / "store" / "shards").glob("shard-*.h5")):
        with h5py.File(shard, "r") as handle:
            made_by.append(json.loads(handle.attrs[SHARD_RUN_ATTR]))
    assert [settings["runtime"] for settings in made_by] == ["torch", "onnxruntime"]
    assert made_by[0]["onnxruntime"] == "" and made_by[1]["onnxruntime"]
    assert all(settings["device"] == "cpu" and settings["torch_threads"] == 1 for settings in made_by)
    assert verify_store(tmp_path / "store") == []
