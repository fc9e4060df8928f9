"""The float32 fast path: frozen norms folded into the convs, res5 over proposals in batches."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from extractors.backbone import ConvNorm, fuse_norms
from extractors.config import RUNTIME_FIELDS, ExtractorConfig
from extractors.detector import BottomUpDetector, build_detector
from extractors.preprocess import collate_images, prepare_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu", rpn_post_nms_topk=40, min_boxes=5, max_boxes=10)


def _randomised_norm(channels: int, seed: int) -> ConvNorm:
    generator = torch.Generator().manual_seed(seed)
    conv = ConvNorm(channels, channels, 3, padding=2, dilation=2)
    for buffer, low in ((conv.norm.weight, -1.0), (conv.norm.bias, -1.0), (conv.norm.running_mean, -1.0),
                        (conv.norm.running_var, 0.1)):
        buffer.copy_(torch.rand(buffer.shape, generator=generator) * 2 + low)
    return conv


def test_folded_norm_equals_conv_then_norm() -> None:
    conv, x = _randomised_norm(8, 0), torch.randn(2, 8, 11, 13)
    expected = conv.norm(torch.nn.functional.conv2d(x, conv.weight, None, padding=2, dilation=2))
    conv.fuse()
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_folding_keeps_the_published_layout_and_loading_drops_the_folded_copy() -> None:
    conv = _randomised_norm(4, 1)
    keys = set(conv.state_dict())
    conv.fuse()
    assert set(conv.state_dict()) == keys and conv.fused_weight is not None
    other = _randomised_norm(4, 2)
    conv.load_state_dict(other.state_dict())
    assert conv.fused_weight is None  # a stale fold would run the old weights
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(conv(x), other(x))


def test_build_detector_folds_every_norm_and_matches_the_unfolded_network(shared_data) -> None:
    photo = np.asarray(Image.open(shared_data / "butd_demo_images" / "000456.jpg").convert("RGB"))
    batch = collate_images([prepare_image(photo, CONFIG)])
    folded = build_detector(CONFIG)
    assert all(m.fused_weight is not None for m in folded.modules() if isinstance(m, ConvNorm))
    plain = BottomUpDetector(CONFIG)
    plain.load_state_dict(folded.state_dict())
    plain.eval()
    for ours, theirs in zip(folded(batch), plain(batch)):  # the same regions, to float32 rounding
        np.testing.assert_array_equal(ours.object_ids, theirs.object_ids)
        np.testing.assert_allclose(ours.boxes, theirs.boxes, rtol=1e-5, atol=1e-2)
        np.testing.assert_allclose(ours.features, theirs.features, rtol=1e-4, atol=1e-4)


def test_res5_batches_of_proposals_give_the_same_regions(shared_data) -> None:
    """roi_batch_size is a runtime setting like batch_size: the same regions, features to float32 rounding."""
    assert "roi_batch_size" in RUNTIME_FIELDS
    photo = np.asarray(Image.open(shared_data / "butd_demo_images" / "example_image.jpg").convert("RGB"))
    batch = collate_images([prepare_image(photo, CONFIG)])
    state = build_detector(CONFIG).state_dict()
    results = []
    for roi_batch in (1, 7, 0, 1000):
        detector = BottomUpDetector(dataclasses.replace(CONFIG, roi_batch_size=roi_batch))
        detector.load_state_dict(state)
        results.append(fuse_norms(detector.eval())(batch)[0])
    for other in results[1:]:
        for name in ("boxes", "object_ids", "attr_ids"):
            np.testing.assert_array_equal(getattr(other, name), getattr(results[0], name))
        for name in ("features", "object_conf", "attr_conf"):
            np.testing.assert_allclose(getattr(other, name), getattr(results[0], name), rtol=1e-5, atol=1e-5)
