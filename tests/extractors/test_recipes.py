"""Both recipes end to end at small size against re-statements of their reference pipelines.

The network is shared (tested in test_backbone / test_detector); what is pinned here is what
each recipe does around it, on real photos, with a seeded R18 detector:
  caffe:    proposals divided by the image scale, then generate_tsv.py's selection (lines 79-95).
  airsplay: detectron2's resize, anchors, RPN post-processing, best-class regressed boxes,
            maxnms selection, per-side rescale and the 400-way attribute softmax, computed here
            from an airsplay-layout file's own arrays (background last, deltas weighted 10/10/5/5).
"""
from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from extractors.__main__ import build_parser, extraction_configs
from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.plan import store_info_for
from extractors.preprocess import collate_images, prepare_image
from extractors.rpn import CELL_ANCHORS
from extractors.weights import write_published
from tests.extractors import references as ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = ExtractorConfig(backbone="R18-C4-demo", device="cpu", rpn_pre_nms_topk=400, rpn_post_nms_topk=60,
                                  min_boxes=10, max_boxes=20, seed=3)
AIRSPLAY = replace(BASE, recipe="airsplay")


@pytest.fixture(scope="module")
def photo(shared_data) -> np.ndarray:
    return np.asarray(Image.open(shared_data / "butd_demo_images" / "004545.jpg").convert("RGB"))


@pytest.fixture(scope="module")
def airsplay_file(tmp_path_factory):
    # A detector whose box regression moves boxes by a few pixels, as a trained one does.
    native = build_detector(BASE).state_dict()
    native["roi_heads.box_predictor.bbox_pred.weight"] = native["roi_heads.box_predictor.bbox_pred.weight"] * 0.02
    path = tmp_path_factory.mktemp("weights") / "faster_rcnn_from_caffe_attr.pkl"
    write_published(native, path, "airsplay", BASE.spec)
    return path


def _network_outputs(detector, config, photo):
    batch = collate_images([prepare_image(photo, config)])
    with torch.inference_mode():
        features, sizes = detector.backbone(batch.images, batch.image_sizes)
        proposals = detector.proposal_generator(features, sizes, batch.image_sizes, batch.scales)[0]
        predictions = detector.roi_heads(features, [proposals])
    return batch, features, proposals, predictions


def test_caffe_selects_on_proposals_in_original_pixels(photo):
    detector = build_detector(BASE)
    batch, _, proposals, predictions = _network_outputs(detector, BASE, photo)
    assert batch.scales[0] != 1.0
    boxes = proposals.numpy() / batch.scales[0]  # generate_tsv.py line 79: rois / im_scales[0]
    keep = ref.generate_tsv_keep(ref.generate_tsv_max_conf(boxes, predictions.class_probs.numpy(), BASE.nms_thresh),
                                 BASE.conf_thresh, BASE.min_boxes, BASE.max_boxes)
    out = detector(batch)[0]
    np.testing.assert_array_equal(out.boxes, boxes[keep])
    np.testing.assert_array_equal(out.features, predictions.features.numpy()[keep])
    np.testing.assert_array_equal(out.object_ids, predictions.class_probs.numpy()[keep, 1:].argmax(axis=1) + 1)


def test_airsplay_resize_is_detectron2s_pil_resize(photo):
    prepared = prepare_image(photo, AIRSPLAY)
    resized = ref.detectron2_resize(photo[:, :, ::-1].copy(), AIRSPLAY.test_short_side, AIRSPLAY.test_max_side)
    np.testing.assert_array_equal(prepared.tensor.numpy(),
                                  (resized.astype(np.float32) - ref.CAFFE_MEANS_BGR).transpose(2, 0, 1))
    (h, w), (new_h, new_w) = photo.shape[:2], resized.shape[:2]
    assert prepared.box_scale == (new_w / w, new_h / h)
    assert not np.array_equal(prepare_image(photo, BASE).tensor.numpy(), prepared.tensor.numpy())


def test_airsplay_anchors_are_detectron2s_in_our_channel_order():
    d2 = ref.detectron2_cell_anchors()  # for each size, each ratio
    ours = CELL_ANCHORS["airsplay"](BASE.spec.anchor_scales, BASE.spec.anchor_ratios).numpy()
    for size in range(4):
        for ratio in range(3):
            np.testing.assert_allclose(ours[ratio * 4 + size], d2[size * 3 + ratio], rtol=1e-6)


def test_airsplay_proposals_follow_find_top_rpn_proposals(photo):
    detector = build_detector(AIRSPLAY)
    batch = collate_images([prepare_image(photo, AIRSPLAY)])
    with torch.inference_mode():
        features, sizes = detector.backbone(batch.images, batch.image_sizes)
        proposals = detector.proposal_generator(features, sizes, batch.image_sizes, batch.scales)[0].numpy()
        logits, deltas = detector.proposal_generator.rpn_head(features)
    (fh, fw), (h, w) = sizes[0], batch.image_sizes[0]
    cell = ref.detectron2_cell_anchors()[[s * 3 + r for r in range(3) for s in range(4)]]  # our channel order
    anchors = ref.detectron2_grid_anchors(cell, fh, fw)
    # rpn_outputs.py lines 414-417 and 437-440: (A*4, H, W) -> (H, W, A, 4); (A, H, W) -> (H, W, A).
    flat_deltas = deltas[0, :, :fh, :fw].numpy().reshape(12, 4, fh, fw).transpose(2, 3, 0, 1).reshape(-1, 4)
    flat_logits = logits[0, :, :fh, :fw].numpy().transpose(1, 2, 0).reshape(-1)
    expected = ref.find_top_rpn_proposals(ref.detectron2_apply_deltas(flat_deltas, anchors), flat_logits, h, w,
                                          AIRSPLAY.rpn_pre_nms_topk, AIRSPLAY.rpn_post_nms_topk,
                                          AIRSPLAY.rpn_nms_thresh)
    np.testing.assert_allclose(proposals, expected, rtol=1e-5, atol=1e-3)


def _airsplay_head(arrays: dict[str, np.ndarray], pooled: np.ndarray):
    """The fork's FastRCNNOutputLayers.forward (fast_rcnn.py lines 360-372) on the file's own arrays."""
    box = "roi_heads.box_predictor."
    logits = pooled @ arrays[box + "cls_score.weight"].T + arrays[box + "cls_score.bias"]
    deltas = pooled @ arrays[box + "bbox_pred.weight"].T + arrays[box + "bbox_pred.bias"]
    embedded = arrays[box + "cls_embedding.weight"][logits.argmax(axis=1)]
    hidden = np.maximum(np.concatenate([pooled, embedded], axis=1) @ arrays[box + "fc_attr.weight"].T
                        + arrays[box + "fc_attr.bias"], 0)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True), deltas,
            hidden @ arrays[box + "attr_score.weight"].T + arrays[box + "attr_score.bias"])


def test_airsplay_regions_follow_the_maxnms_script(photo, airsplay_file):
    detector = build_detector(replace(AIRSPLAY, weights=str(airsplay_file)))
    batch, _, proposals, predictions = _network_outputs(detector, AIRSPLAY, photo)
    with open(airsplay_file, "rb") as handle:
        arrays = pickle.load(handle)["model"]
    probs, deltas, attr_logits = _airsplay_head(arrays, predictions.features.numpy().astype(np.float64))
    (h, w), (raw_h, raw_w) = batch.image_sizes[0], batch.original_hw[0]
    # maxnms.py lines 47-59: background last dropped, best class, its regressed box (weights 10, 10, 5, 5), clipped.
    scores, best = probs[:, :-1].max(axis=1), probs[:, :-1].argmax(axis=1)
    boxes = ref.detectron2_apply_deltas(deltas, proposals.numpy().astype(np.float64), weights=(10.0, 10.0, 5.0, 5.0))
    boxes = ref.detectron2_clip(boxes.reshape(len(best), -1, 4)[np.arange(len(best)), best], h, w)
    keep = ref.maxnms_keep(boxes.astype(np.float32), scores.astype(np.float32), AIRSPLAY.min_boxes, AIRSPLAY.max_boxes)
    # detector_postprocess (postprocessing.py lines 27-36): scale per side to the raw size, clip there.
    raw_boxes = ref.detectron2_clip(boxes[keep] * [raw_w / w, raw_h / h, raw_w / w, raw_h / h], raw_h, raw_w)
    attr_conf, attr_ids = ref.airsplay_attributes(attr_logits[keep])
    out = detector(batch)[0]
    assert 0 < len(keep) <= AIRSPLAY.max_boxes and len(out.boxes) == len(keep)
    np.testing.assert_allclose(out.boxes, raw_boxes, rtol=1e-4, atol=1e-2)
    np.testing.assert_array_equal(out.features, predictions.features.numpy()[keep])
    np.testing.assert_array_equal(out.object_ids, best[keep] + 1)  # the store's ids: 0 is background
    np.testing.assert_allclose(out.object_conf, scores[keep], rtol=1e-5)
    np.testing.assert_array_equal(out.attr_ids, attr_ids + 1)
    np.testing.assert_allclose(out.attr_conf, attr_conf, rtol=1e-4)
    assert not np.allclose(out.boxes, proposals.numpy()[keep] / batch.scales[0], atol=0.5)  # boxes were regressed


def test_airsplay_given_boxes_scale_per_side(photo):
    # demo_feature_extraction_attr_given_box.ipynb cell 4: boxes.scale(new_w / raw_w, new_h / raw_h).
    detector = build_detector(AIRSPLAY)
    batch = collate_images([prepare_image(photo, AIRSPLAY)])
    given = np.array([[10, 20, 200, 150], [0, 0, photo.shape[1] - 1, photo.shape[0] - 1]], dtype=np.float32)
    out = detector(batch, [given])[0]
    (h, w), (raw_h, raw_w) = batch.image_sizes[0], batch.original_hw[0]
    scaled = torch.from_numpy(given * np.float32([w / raw_w, h / raw_h, w / raw_w, h / raw_h]))
    with torch.inference_mode():
        features, _ = detector.backbone(batch.images, batch.image_sizes)
        expected = detector.roi_heads(features, [scaled]).features.numpy()
    np.testing.assert_allclose(out.features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.boxes, given)


def test_recipe_is_a_validated_setting_recorded_in_the_store_config():
    with pytest.raises(ValueError, match="recipe='detectron2'"):
        ExtractorConfig(recipe="detectron2")
    assert ExtractorConfig().recipe == "caffe"
    assert store_info_for(AIRSPLAY, "float16").extractor["recipe"] == "airsplay"
    args = build_parser().parse_args(["extract", "--images", "x", "--store", "y", "--recipe", "airsplay"])
    assert extraction_configs(args)[0].recipe == "airsplay"
