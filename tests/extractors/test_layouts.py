"""Parity of the published weight layouts with the reference code, and what verify-weights says.

Files are written here in each exact layout (key names, shapes, background index, anchor order,
`cell_anchors.0`) from a small seeded detector; the layout rules are checked against
re-statements of the references (references.py), not against our own writer:
  airsplay: fast_rcnn.py lines 90 (background last), 351-353 (cls_embedding, fc_attr,
            attr_score); anchor_generator.py lines 162-175 (size-major, centred at 0);
            config/defaults.py line 285 (ROI box deltas weighted (10, 10, 5, 5)).
  milvlg:   bua/caffe/modeling/fast_rcnn.py lines 245-257 (cls_embed, attr_linear1/2, 1601
            outputs with background first); rpn_outputs.py line 361 (softmax over [A
            background, A object] channels); configs/caffe/test-caffe-r101.yaml (detectron2
            anchors of sizes [4, 8, 16, 32], so the Caffe anchors must come from the file).
"""
from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from extractors.__main__ import main
from extractors.config import ExtractorConfig
from extractors.detector import BottomUpDetector, build_detector
from extractors.extract import InProcessRunner, RunConfig, extract_dataset
from extractors.layouts import CELL_ANCHORS_KEY, detect_format, to_native, to_published
from extractors.loader import images_in_directory
from extractors.preprocess import collate_images, prepare_image
from extractors.weights import compare_keys, read_checkpoint, write_published
from pipeline.errors import InputError
from pipeline.store import StoreConfig
from tests.extractors.references import caffe_generate_anchors, detectron2_cell_anchors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RPN = "proposal_generator.rpn_head."
BOX = "roi_heads.box_predictor."
CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu", rpn_pre_nms_topk=200, rpn_post_nms_topk=30,
                                    min_boxes=4, max_boxes=8, seed=5)


@pytest.fixture(scope="module")
def native() -> dict[str, torch.Tensor]:
    return build_detector(CONFIG).state_dict()


@pytest.fixture(scope="module")
def native_without_attributes() -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    return BottomUpDetector(CONFIG, with_attributes=False).state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory, native, native_without_attributes) -> dict[str, Path]:
    """The four published variants, at R18 size."""
    folder = tmp_path_factory.mktemp("published")
    paths = {"airsplay-attr": folder / "faster_rcnn_from_caffe_attr.pkl",
             "airsplay-plain": folder / "faster_rcnn_from_caffe.pkl",
             "milvlg-anchors": folder / "bua-caffe-frcn-r18_with_attributes.pth",
             "milvlg-plain": folder / "bua-caffe-frcn-r18.pth"}
    write_published(native, paths["airsplay-attr"], "airsplay", CONFIG.spec)
    write_published(native_without_attributes, paths["airsplay-plain"], "airsplay", CONFIG.spec)
    write_published(native, paths["milvlg-anchors"], "milvlg", CONFIG.spec, cell_anchors=True)
    write_published(native, paths["milvlg-plain"], "milvlg", CONFIG.spec)
    return paths


def _raw_pickle(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as handle:
        return pickle.load(handle)["model"]  # our own file, so plain pickle is fine here


def test_airsplay_layout_is_the_forks(files, native):
    published = _raw_pickle(files["airsplay-attr"])
    assert set(published) == set(native)  # detectron2 names throughout, attr head cls_embedding / fc_attr / attr_score
    for key in ("cls_score.weight", "cls_score.bias", "cls_embedding.weight", "attr_score.weight", "attr_score.bias"):
        np.testing.assert_array_equal(published[BOX + key][-1], native[BOX + key][0].numpy())  # background last
        np.testing.assert_array_equal(published[BOX + key][:-1], native[BOX + key][1:].numpy())
    # Size-major channels: file channel k is size k // 3, ratio k % 3; ours are ratio-major (ratio * 4 + size).
    for k in range(12):
        ours = (k % 3) * 4 + k // 3
        np.testing.assert_array_equal(published[RPN + "objectness_logits.bias"][k],
                                      native[RPN + "objectness_logits.bias"][ours].numpy())
        np.testing.assert_array_equal(published[RPN + "anchor_deltas.weight"][4 * k:4 * k + 4],
                                      native[RPN + "anchor_deltas.weight"][4 * ours:4 * ours + 4].numpy())
    weights = np.tile([10.0, 10.0, 5.0, 5.0], 1600).astype(np.float32)
    np.testing.assert_allclose(published[BOX + "bbox_pred.bias"], native[BOX + "bbox_pred.bias"].numpy() * weights,
                               rtol=1e-6)
    assert published[BOX + "bbox_pred.weight"].shape == (6400, 512)


def test_airsplay_cell_anchors_are_detectron2s_in_size_major_order(native):
    published = to_published(native, "airsplay", CONFIG.spec, cell_anchors=True)
    np.testing.assert_allclose(published[CELL_ANCHORS_KEY].numpy(), detectron2_cell_anchors(), rtol=1e-6)


def test_milvlg_layout_is_buas(files, native):
    published = torch.load(files["milvlg-anchors"], weights_only=True)["model"]
    assert ({"cls_embed.weight", "attr_linear1.weight", "attr_linear2.bias"}
            <= {k[len(BOX):] for k in published if k.startswith(BOX)})
    assert not {BOX + "cls_embedding.weight", BOX + "fc_attr.weight", BOX + "attr_score.weight"} & set(published)
    torch.testing.assert_close(published[BOX + "cls_score.bias"], native[BOX + "cls_score.bias"])  # background first
    torch.testing.assert_close(published[BOX + "attr_linear2.bias"], native[BOX + "attr_score.bias"])
    pairs = published[RPN + "objectness_logits.bias"]
    assert pairs.shape == (24,)
    object_prob = torch.softmax(torch.stack([pairs[:12], pairs[12:]]), dim=0)[1]  # view(N, 2, A, H, W), softmax dim 1
    torch.testing.assert_close(object_prob, torch.sigmoid(native[RPN + "objectness_logits.bias"]))
    assert published[BOX + "bbox_pred.weight"].shape == (6404, 512)
    torch.testing.assert_close(published[BOX + "bbox_pred.weight"][4:], native[BOX + "bbox_pred.weight"])
    np.testing.assert_array_equal(published[CELL_ANCHORS_KEY].numpy(), caffe_generate_anchors())


def test_formats_are_detected_with_and_without_attribute_heads(files):
    for name, path in files.items():
        assert detect_format(read_checkpoint(path)) == name.split("-")[0], name


def _verify(path: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["verify-weights", str(path), "--backbone", "R18-C4-demo", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


EXPECTED_NOTES = {
    "airsplay-attr": ["format: airsplay (detected)", "moved from last to first in cls_score.weight", "attr_score.bias",
                      "permuted from detectron2's size-major order", "cell anchors: not in the file",
                      "divided by the BBOX_REG_WEIGHTS (10.0, 10.0, 5.0, 5.0)",
                      "attribute head: present (cls_embedding (1601, 256)"],
    "airsplay-plain": ["format: airsplay (detected)", "moved from last to first in cls_score.weight, cls_score.bias",
                       "permuted from detectron2's size-major order", "attribute head: absent"],
    "milvlg-anchors": ["format: milvlg (detected)", "first, as in Caffe", "cls_embed -> cls_embedding",
                       "24 softmax channels", "background row dropped (6404 -> 6400)",
                       f"cell anchors: {CELL_ANCHORS_KEY} checked: equal to Caffe's generate_anchors",
                       "in Caffe's ratio-major order already",
                       "attribute head: present"],
    "milvlg-plain": ["format: milvlg (detected)", "cell anchors: not in the file",
                     "in Caffe's ratio-major order already"],
}


@pytest.mark.parametrize("variant", sorted(EXPECTED_NOTES))
def test_verify_weights_fits_each_published_variant_and_says_what_it_mapped(files, capsys, variant):
    code, out, err = _verify(files[variant], capsys)
    assert code == 0, out + err
    assert "missing: 0\nunexpected: 0\nshape-mismatched: 0" in out
    for note in EXPECTED_NOTES[variant]:
        assert note in out, f"{note!r} not in:\n{out}"


def test_milvlg_cell_anchors_built_from_sizes_alone_are_refused(tmp_path, native, capsys):
    # What detectron2 makes of MILVLG's SIZES [[4, 8, 16, 32]]: 2.8-22.6 px anchors, not Caffe's.
    published = to_published(native, "milvlg", CONFIG.spec)
    published[CELL_ANCHORS_KEY] = torch.from_numpy(detectron2_cell_anchors(sizes=(4, 8, 16, 32)))
    path = tmp_path / "bua-caffe-frcn-r18-d2anchors.pth"
    torch.save({"model": published}, path)
    code, _, err = _verify(path, capsys)
    assert code == 2 and CELL_ANCHORS_KEY in err and "another anchor setup" in err and "generate_anchors" in err
    with pytest.raises(InputError, match=r"bua-caffe-frcn-r18-d2anchors\.pth.*cell_anchors"):
        build_detector(replace(CONFIG, weights=str(path)))


def test_cell_anchors_in_another_order_take_their_channels_along(tmp_path, native, files, shared_data, capsys):
    # A file whose channels (and stored anchors) are in size-major order: the anchors say so, and
    # the detector must come out the same as from the plain Caffe-order file.
    published = to_published(native, "milvlg", CONFIG.spec, cell_anchors=True)
    size_major = torch.tensor([(k % 3) * 4 + k // 3 for k in range(12)])
    published[CELL_ANCHORS_KEY] = published[CELL_ANCHORS_KEY][size_major]
    pairs = published[RPN + "objectness_logits.weight"]
    published[RPN + "objectness_logits.weight"] = torch.cat([pairs[:12][size_major], pairs[12:][size_major]])
    published[RPN + "objectness_logits.bias"] = torch.cat([published[RPN + "objectness_logits.bias"][:12][size_major],
                                                           published[RPN + "objectness_logits.bias"][12:][size_major]])
    for part in ("weight", "bias"):
        deltas = published[RPN + f"anchor_deltas.{part}"]
        published[RPN + f"anchor_deltas.{part}"] = (deltas.reshape(12, 4, *deltas.shape[1:])[size_major]
                                                    .reshape(deltas.shape))
    path = tmp_path / "bua-size-major.pth"
    torch.save({"model": published}, path)
    code, out, _ = _verify(path, capsys)
    assert code == 0 and "permuted from detectron2's size-major order" in out
    photo = np.asarray(Image.open(shared_data / "butd_demo_images" / "000456.jpg").convert("RGB"))
    batch = collate_images([prepare_image(photo, CONFIG)])
    expected = build_detector(replace(CONFIG, weights=str(files["milvlg-plain"])))(batch)[0]
    actual = build_detector(replace(CONFIG, weights=str(path)))(batch)[0]
    np.testing.assert_allclose(actual.boxes, expected.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(actual.features, expected.features, rtol=1e-5, atol=1e-5)


def test_attribute_free_file_extracts_with_no_attributes(tmp_path, files, shared_data):
    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted((shared_data / "flickr8k" / "images").glob("*.jpg"))[:2]:
        shutil.copy(photo, images / photo.name)
    config = replace(CONFIG, weights=str(files["airsplay-plain"]))
    detector = build_detector(config)
    assert not detector.with_attributes
    run = RunConfig(num_workers=0)
    summary = extract_dataset(images_in_directory(images), tmp_path / "store", config, store=StoreConfig(shard_size=2),
                              run=run, runner=InProcessRunner(config, run, detector=detector, progress=False),
                              progress=False)
    assert summary.extracted == 2 and summary.failed == 0
    assert json.loads((tmp_path / "store" / "store.json").read_text())["extractor"]["attribute_head"] is False
    with h5py.File(next((tmp_path / "store" / "shards").glob("*.h5")), "r") as shard:
        count = shard["num_boxes"][0]
        assert count >= CONFIG.min_boxes and (shard["object_ids"][0, :count] > 0).all()
        assert not shard["attr_ids"][()].any() and not shard["attr_conf"][()].any()


@pytest.mark.slow
def test_r101_variants_fit_the_published_model_with_zero_problems():
    config = ExtractorConfig(backbone="R101-C4-VG")
    expected = {True: BottomUpDetector(config).state_dict(),
                False: BottomUpDetector(config, with_attributes=False).state_dict()}
    for weights_format, cell_anchors in (("airsplay", False), ("airsplay", True), ("milvlg", False), ("milvlg", True)):
        for with_attributes, model_state in expected.items():
            published = to_published(model_state, weights_format, config.spec, cell_anchors=cell_anchors)
            converted = to_native(published, "auto", config.spec)
            report = compare_keys(converted.native, model_state)
            assert report.ok and converted.with_attributes == with_attributes, (weights_format, cell_anchors,
                                                                                report.summary())
    assert tuple(expected[True][BOX + "cls_embedding.weight"].shape) == (1601, 2048 // 8)  # fast_rcnn.py lines 351-353
