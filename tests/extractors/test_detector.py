"""BottomUpDetector end to end at small size: selection, batching, given boxes, seeding, AMP."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.preprocess import collate_images, prepare_image


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def config() -> ExtractorConfig:
    return ExtractorConfig(backbone="R18-C4-demo", device="cpu", rpn_post_nms_topk=60, min_boxes=10, max_boxes=20)


@pytest.fixture(scope="module")
def detector(config):
    return build_detector(config)


@pytest.fixture(scope="module")
def photos(shared_data) -> list[np.ndarray]:
    names = ["000456.jpg", "example_image.jpg"]
    return [np.asarray(Image.open(shared_data / "butd_demo_images" / n).convert("RGB")) for n in names]


def run(detector, config, images, given=None):
    return detector(collate_images([prepare_image(image, config) for image in images]), given_boxes=given)


def test_regions_of_real_photos_have_the_store_layout(detector, config, photos):
    for photo, out in zip(photos, run(detector, config, photos)):
        k = len(out.boxes)
        assert config.min_boxes <= k <= config.max_boxes
        assert out.boxes.dtype == np.float32 and out.features.shape == (k, 512) and out.features.dtype == np.float32
        h, w = photo.shape[:2]
        assert (out.boxes[:, 0] >= 0).all() and (out.boxes[:, 2] <= w).all() and (out.boxes[:, 3] <= h).all()
        assert (out.boxes[:, 2] >= out.boxes[:, 0]).all()
        assert out.object_ids.dtype == np.int64 and 1 <= out.object_ids.min() and out.object_ids.max() <= 1600
        assert (1 <= out.attr_ids.min() and out.attr_ids.max() <= 400
                and ((out.attr_conf > 0) & (out.attr_conf <= 1)).all())
        assert np.isfinite(out.features).all() and (out.features >= 0).all()  # pooled after ReLU


def test_batch_gives_the_same_regions_as_one_at_a_time(detector, config, photos):
    batched = run(detector, config, photos)
    for photo, together in zip(photos, batched):
        alone = run(detector, config, [photo])[0]
        np.testing.assert_allclose(together.boxes, alone.boxes, rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(together.features, alone.features, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(together.object_ids, alone.object_ids)


def test_given_boxes_are_described_in_the_given_order(detector, config, photos):
    boxes = np.array([[10, 20, 200, 300], [0, 0, 499, 374], [300, 50, 480, 200]], dtype=np.float32)
    out = run(detector, config, photos[:1], [boxes])[0]
    np.testing.assert_array_equal(out.boxes, boxes)
    reversed_out = run(detector, config, photos[:1], [boxes[::-1].copy()])[0]
    np.testing.assert_allclose(reversed_out.features, out.features[::-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(reversed_out.attr_ids, out.attr_ids[::-1])


def test_given_boxes_must_be_n_by_4(detector, config, photos):
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        run(detector, config, photos[:1], [np.zeros((2, 3), np.float32)])
    with pytest.raises(ValueError, match="entries"):
        run(detector, config, photos[:1], [])


def test_random_init_is_seeded(config):
    first, again = build_detector(config), build_detector(config)
    other = build_detector(ExtractorConfig(backbone="R18-C4-demo", device="cpu", seed=1))
    weight = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast fp16/bf16 runs on a CUDA GPU only")
@pytest.mark.parametrize("amp_dtype", ["fp16", "bf16"])
def test_autocast_on_gpu_stays_close_to_float32(photos, amp_dtype):
    base = ExtractorConfig(backbone="R18-C4-demo", device="cuda")
    boxes = [np.array([[10, 20, 200, 300], [0, 0, 499, 374]], dtype=np.float32)]
    full = run(build_detector(base), base, photos[:1], boxes)[0]
    amp_config = ExtractorConfig(backbone="R18-C4-demo", device="cuda", amp_dtype=amp_dtype)
    half = run(build_detector(amp_config), amp_config, photos[:1], boxes)[0]
    assert half.features.dtype == np.float32
    np.testing.assert_allclose(half.features, full.features, rtol=0.05, atol=0.05)
