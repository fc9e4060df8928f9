"""ResNet C4 layout (published key names), Caffe anchors, and padding invariance of features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors.backbone import ResNetC4
from extractors.config import PRESETS, ExtractorConfig
from extractors.detector import BottomUpDetector
from extractors.rpn import cell_anchors


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_r101_layout_matches_the_published_model():
    model = BottomUpDetector(ExtractorConfig(backbone="R101-C4-VG"))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert len(shapes) == 535
    assert shapes["backbone.stem.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["backbone.res4.22.conv3.norm.running_var"] == (1024,)
    assert "backbone.res4.23.conv1.weight" not in shapes
    assert shapes["roi_heads.res5.0.shortcut.weight"] == (2048, 1024, 1, 1)
    assert shapes["proposal_generator.rpn_head.objectness_logits.weight"] == (12, 512, 1, 1)
    assert shapes["proposal_generator.rpn_head.anchor_deltas.weight"] == (48, 512, 1, 1)
    assert shapes["roi_heads.box_predictor.cls_score.weight"] == (1601, 2048)
    assert shapes["roi_heads.box_predictor.bbox_pred.weight"] == (6400, 2048)
    assert shapes["roi_heads.box_predictor.fc_attr.weight"] == (512, 2048 + 256)
    assert shapes["roi_heads.box_predictor.attr_score.weight"] == (401, 512)
    # Caffe: stride in the first 1x1 of a block; res5 keeps 14x14 with a dilated 3x3.
    assert model.backbone.res3[0].conv1.stride == (2, 2) and model.backbone.res3[0].conv2.stride == (1, 1)
    assert model.roi_heads.res5[0].conv1.stride == (1, 1) and model.roi_heads.res5[0].conv2.dilation == (2, 2)


def test_caffe_anchors_match_generate_anchors_output():
    # py-faster-rcnn's generate_anchors() with scales (8, 16, 32), as printed by the reference.
    expected = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]
    np.testing.assert_array_equal(cell_anchors((8, 16, 32), (0.5, 1.0, 2.0)).numpy(), expected)
    assert cell_anchors(PRESETS["R101-C4-VG"].anchor_scales, (0.5, 1.0, 2.0)).shape == (12, 4)


def test_r18_stride_16_and_features_independent_of_padding():
    torch.manual_seed(0)
    body = ResNetC4(PRESETS["R18-C4"]).eval()
    alone = torch.randn(1, 3, 100, 70)
    padded = torch.zeros(2, 3, 128, 128)
    padded[0, :, :100, :70] = alone[0]
    padded[1] = torch.randn(3, 128, 128)
    with torch.no_grad():
        single, single_sizes = body(alone, [(100, 70)])
        batched, batched_sizes = body(padded, [(100, 70), (128, 128)])
    assert single.shape == (1, 256, 7, 5) and single_sizes == [(7, 5)]
    assert batched_sizes == [(7, 5), (8, 8)]
    torch.testing.assert_close(batched[0, :, :7, :5], single[0], rtol=1e-4, atol=1e-4)
    assert batched[0, :, 7:, :].abs().sum() == 0  # padding is zeroed for the ROI pooler


def test_detectron2_backend_matches_native_on_the_same_weights():
    from extractors import detectron2_backend

    if detectron2_backend.DETECTRON2_ERROR is not None:
        pytest.skip(detectron2_backend.DETECTRON2_ERROR)
    config = ExtractorConfig(backbone="R50-C4", test_short_side=96, test_max_side=128)
    native = BottomUpDetector(config).eval()
    other = detectron2_backend.Detectron2RegionFeatures(config.spec).eval()
    other.load_native(native.state_dict())
    images = torch.randn(1, 3, 96, 128)
    boxes = [torch.tensor([[0.0, 0.0, 60.0, 50.0], [30.0, 20.0, 127.0, 95.0]])]
    with torch.no_grad():
        native_res4, _ = native.backbone(images, [(96, 128)])
        native_pooled = native.roi_heads(native_res4, boxes).features
    d2_res4, d2_pooled = other(images, boxes)
    torch.testing.assert_close(d2_res4, native_res4, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d2_pooled, native_pooled, rtol=1e-4, atol=1e-4)
