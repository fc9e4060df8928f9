"""prepare_image / collate_images: Caffe pixel layout, the reference resize rule, padding."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from extractors.config import CAFFE_PIXEL_MEANS_BGR, ExtractorConfig
from extractors.preprocess import collate_images, prepare_image, resize_scale


def test_resize_scale_sets_short_side_unless_long_side_exceeds_cap():
    assert resize_scale(300, 400, 600, 1000) == 2.0
    assert resize_scale(100, 1000, 600, 1000) == 1.0  # 6000 px long side would exceed 1000
    assert resize_scale(375, 500, 128, 160) == pytest.approx(160 / 500)


def test_prepare_image_is_bgr_minus_caffe_means_at_the_resized_size():
    red = np.zeros((30, 40, 3), dtype=np.uint8)
    red[..., 0] = 255
    prepared = prepare_image(red, ExtractorConfig(test_short_side=60, test_max_side=100))
    assert prepared.tensor.shape == (3, 60, 80)
    assert prepared.scale == 2.0 and prepared.original_hw == (30, 40)
    expected = np.array([0, 0, 255], dtype=np.float32) - np.array(CAFFE_PIXEL_MEANS_BGR, dtype=np.float32)
    np.testing.assert_allclose(prepared.tensor.mean(dim=(1, 2)).numpy(), expected, rtol=1e-6)


def test_prepare_real_photo_matches_reference_sizes(shared_data):
    image = np.asarray(Image.open(shared_data / "butd_demo_images" / "example_image.jpg").convert("RGB"))
    prepared = prepare_image(image, ExtractorConfig())
    h, w = image.shape[:2]
    assert max(prepared.tensor.shape[1:]) == 1000  # a wide photo is capped by the long side
    assert prepared.tensor.shape[1:] == (round(h * prepared.scale), round(w * prepared.scale))


def test_collate_pads_with_zeros_and_keeps_sizes():
    config = ExtractorConfig(test_short_side=20, test_max_side=40)
    rng = np.random.default_rng(0)
    items = [prepare_image(rng.integers(0, 256, (10, 20, 3), dtype=np.uint8), config),
             prepare_image(rng.integers(0, 256, (20, 10, 3), dtype=np.uint8), config)]
    batch = collate_images(items)
    assert batch.images.shape == (2, 3, 40, 40)
    assert batch.image_sizes == [(20, 40), (40, 20)]
    assert batch.scales == [2.0, 2.0] and batch.original_hw == [(10, 20), (20, 10)]
    assert batch.images[0, :, 20:, :].abs().sum() == 0 and batch.images[1, :, :, 20:].abs().sum() == 0
    assert (batch.images[1, :, :40, :20] == items[1].tensor).all()


@pytest.mark.parametrize("bad", [np.zeros((5, 5), np.uint8), np.zeros((5, 5, 4), np.uint8),
                                 np.zeros((5, 5, 3), np.float32)])
def test_prepare_rejects_non_rgb_uint8(bad):
    with pytest.raises(ValueError, match="uint8 RGB"):
        prepare_image(bad, ExtractorConfig())
