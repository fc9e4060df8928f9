"""Published weight files: generated here in each container, they load with no key problems,
equivalent airsplay and milvlg files give the same detections under both recipes, and loading
is safe. The layouts themselves are pinned against the references in test_layouts.py."""
from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extractors.config import ExtractorConfig
from extractors.detector import BottomUpDetector, build_detector
from extractors.preprocess import collate_images, prepare_image
from extractors.layouts import detect_format, to_native, to_published
from extractors.weights import compare_keys, convert_file, fetch_weights, read_checkpoint, write_published
from pipeline.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def config() -> ExtractorConfig:
    return ExtractorConfig(backbone="R18-C4-demo", device="cpu", rpn_post_nms_topk=40,
                           min_boxes=8, max_boxes=12, seed=7)


@pytest.fixture(scope="module")
def source_model(config) -> BottomUpDetector:
    return build_detector(config)


@pytest.fixture(scope="module")
def published_files(tmp_path_factory, source_model, config) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    files = {"airsplay": folder / "faster_rcnn_from_caffe_attr.pkl", "milvlg": folder / "bua-caffe-frcn-r18.pth"}
    for fmt, path in files.items():
        write_published(source_model.state_dict(), path, fmt, config.spec)
    return files


def test_files_have_the_published_containers_and_layouts(published_files):
    with open(published_files["airsplay"], "rb") as handle:
        pkl = pickle.load(handle)  # our own file, so plain pickle is fine here
    assert set(pkl) == {"model", "__author__"} and all(isinstance(v, np.ndarray) for v in pkl["model"].values())
    assert pkl["model"]["proposal_generator.rpn_head.objectness_logits.weight"].shape[0] == 12
    assert pkl["model"]["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 6400
    pth = torch.load(published_files["milvlg"], weights_only=True)["model"]
    assert pth["proposal_generator.rpn_head.objectness_logits.weight"].shape[0] == 24
    assert pth["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 6404
    assert ("roi_heads.box_predictor.cls_embed.weight" in pth
            and "roi_heads.box_predictor.cls_embedding.weight" not in pth)
    assert ("roi_heads.box_predictor.fc_attr.weight" in pkl["model"]
            and "roi_heads.box_predictor.attr_linear1.weight" not in pkl["model"])
    assert detect_format(read_checkpoint(published_files["airsplay"])) == "airsplay"
    assert detect_format(read_checkpoint(published_files["milvlg"])) == "milvlg"


def test_airsplay_layout_is_background_last_and_size_major(source_model, config):
    native = {k: v.clone() for k, v in source_model.state_dict().items()}
    # ratio-major: 3 ratios x 4 scales
    native["proposal_generator.rpn_head.objectness_logits.bias"] = torch.arange(12.0)
    published = to_published(native, "airsplay", config.spec)
    order = published["proposal_generator.rpn_head.objectness_logits.bias"].long().tolist()
    assert order == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]  # detectron2: for each size, each ratio
    deltas = published["proposal_generator.rpn_head.anchor_deltas.bias"].reshape(12, 4)
    torch.testing.assert_close(deltas[1], native["proposal_generator.rpn_head.anchor_deltas.bias"].reshape(12, 4)[4])
    for key in ("cls_score.bias", "attr_score.bias", "cls_embedding.weight"):
        name = "roi_heads.box_predictor." + key
        torch.testing.assert_close(published[name][-1], native[name][0])  # background / "no attribute"
        torch.testing.assert_close(published[name][0], native[name][1])


@pytest.mark.parametrize("recipe", ["caffe", "airsplay"])
def test_both_formats_give_the_same_detections(published_files, source_model, config, shared_data, recipe):
    photo = np.asarray(Image.open(shared_data / "butd_demo_images" / "000542.jpg").convert("RGB"))
    recipe_config = replace(config, recipe=recipe)
    batch = collate_images([prepare_image(photo, recipe_config)])
    source = BottomUpDetector(recipe_config).eval()
    source.load_state_dict(source_model.state_dict())
    expected = source(batch)[0]
    for fmt, path in published_files.items():
        loaded = build_detector(replace(recipe_config, weights=str(path), weights_format="auto", seed=99))
        out = loaded(batch)[0]
        np.testing.assert_allclose(out.boxes, expected.boxes, rtol=1e-4, atol=1e-2, err_msg=fmt)
        np.testing.assert_allclose(out.features, expected.features, rtol=1e-4, atol=1e-4, err_msg=fmt)
        np.testing.assert_array_equal(out.object_ids, expected.object_ids, err_msg=fmt)
        np.testing.assert_array_equal(out.attr_ids, expected.attr_ids, err_msg=fmt)


def test_milvlg_softmax_pairs_become_equal_sigmoid_logits(source_model, config):
    native = source_model.state_dict()
    pairs = to_published(native, "milvlg", config.spec)["proposal_generator.rpn_head.objectness_logits.bias"]
    softmax_object = torch.softmax(torch.stack([pairs[:12], pairs[12:]]), dim=0)[1]
    sigmoid_object = torch.sigmoid(native["proposal_generator.rpn_head.objectness_logits.bias"])
    torch.testing.assert_close(softmax_object, sigmoid_object)


@pytest.mark.slow
def test_r101_files_in_both_layouts_fit_with_zero_problems(tmp_path):
    spec_config = ExtractorConfig(backbone="R101-C4-VG")
    model = BottomUpDetector(spec_config)
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    write_published(model.state_dict(), path, "airsplay", spec_config.spec)
    report = compare_keys(convert_file(path, "auto", spec_config.spec).native, model.state_dict())
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    tiny = ExtractorConfig(backbone="R101-C4-VG", weights=str(path), device="cpu", test_short_side=64, test_max_side=80)
    photo = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = build_detector(tiny)(collate_images([prepare_image(photo, tiny)]),
                               [np.array([[4, 4, 40, 30]], np.float32)])[0]
    assert out.features.shape == (1, 2048) and np.isfinite(out.features).all()
    milvlg = to_published(model.state_dict(), "milvlg", spec_config.spec)
    milvlg = {k: v for k, v in milvlg.items()} | {"backbone.res4.0.conv1.norm.num_batches_tracked": torch.tensor(0)}
    native = to_native(milvlg, "milvlg", spec_config.spec).native
    assert set(native) == set(model.state_dict())
    assert all(native[k].shape == v.shape for k, v in model.state_dict().items())


def test_frozen_norms_without_running_stats_load_as_identity(tmp_path, source_model, config):
    arrays = {k: v.numpy() for k, v in to_published(source_model.state_dict(), "airsplay", config.spec).items()
              if not k.endswith(("running_mean", "running_var"))}
    path = tmp_path / "scale_shift_only.pkl"
    path.write_bytes(pickle.dumps({"model": arrays}))
    converted = convert_file(path, "airsplay", config.spec)
    assert compare_keys(converted.native, source_model.state_dict()).ok
    assert torch.equal(converted.native["backbone.stem.conv1.norm.running_var"], torch.ones(64))
    assert any(note.startswith("frozen norms:") for note in converted.notes)


def test_wrong_backbone_is_refused_naming_the_file(published_files, config):
    with pytest.raises(InputError, match=r"bua-caffe-frcn-r18\.pth.*unexpected"):
        build_detector(ExtractorConfig(backbone="R50-C4", weights=str(published_files["milvlg"]), device="cpu"))


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/scan_pipeline_pwned",))


def test_pickled_code_is_never_run(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": RunsCode()}}))
    with pytest.raises(InputError, match="refusing to load"):
        read_checkpoint(path)
    assert not Path("/tmp/scan_pipeline_pwned").exists()
    torch_path = tmp_path / "evil.pth"
    torch.save({"model": {"x": RunsCode()}}, torch_path)
    with pytest.raises(InputError, match="torch weights"):
        read_checkpoint(torch_path)
    assert not Path("/tmp/scan_pipeline_pwned").exists()


def test_url_download_is_cached_and_checksummed(tmp_path, published_files):
    source = published_files["airsplay"]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="SHA-256"):
        fetch_weights(source.as_uri(), sha256="0" * 64, cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # a bad download never enters the cache
    cached = fetch_weights(source.as_uri(), sha256=digest, cache_dir=str(tmp_path))
    assert cached == tmp_path / source.name and cached.read_bytes() == source.read_bytes()
    with pytest.raises(InputError, match="not found"):
        fetch_weights(str(tmp_path / "absent.pth"))


@pytest.mark.slow
def test_verify_weights_cli_counts_problems(published_files, capsys):
    from extractors.__main__ import main

    assert main(["verify-weights", str(published_files["airsplay"]), "--backbone", "R18-C4-demo",
                 "--format", "airsplay"]) == 0
    assert "missing: 0\nunexpected: 0\nshape-mismatched: 0" in capsys.readouterr().out
    bad = subprocess.run([sys.executable, "-m", "extractors", "verify-weights",
                          str(published_files["milvlg"]), "--backbone", "R50-C4"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stderr
    counts = dict(line.split(": ", 1) for line in bad.stdout.splitlines()
                  if line.startswith(("missing:", "unexpected:", "shape-mismatched:")))
    assert set(counts) == {"missing", "unexpected", "shape-mismatched"} and int(counts["shape-mismatched"]) > 0
