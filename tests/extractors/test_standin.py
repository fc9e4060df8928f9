"""Stand-in weights: the published layout, activations and class scores that look like a trained model's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.preprocess import collate_images, prepare_image
from extractors.standin import calibrate_standin

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = ExtractorConfig(backbone="R18-C4", device="cpu", test_short_side=160, test_max_side=240,
                         rpn_post_nms_topk=40, min_boxes=5, max_boxes=10)


def _batch(shared_data: Path, name: str):
    photo = np.asarray(Image.open(shared_data / "butd_demo_images" / name).convert("RGB"))
    return collate_images([prepare_image(photo, CONFIG)])


def test_calibrated_standin_has_sane_activations_and_decided_classes(shared_data) -> None:
    detector = build_detector(CONFIG)
    keys = {name: tuple(value.shape) for name, value in detector.state_dict().items()}
    calibrate_standin(detector, _batch(shared_data, "000456.jpg"))
    assert {name: tuple(value.shape) for name, value in detector.state_dict().items()} == keys
    seen = {}
    detector.backbone.res4.register_forward_hook(lambda _m, _i, out: seen.__setitem__("res4", out[0]))
    detector.roi_heads.box_predictor.cls_score.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("logits", out))
    outputs = detector(_batch(shared_data, "example_image.jpg"))  # another photo than the calibration's
    assert 0.2 < float(seen["res4"].std()) < 5 and float(seen["res4"].abs().max()) < 100
    probs = torch.softmax(seen["logits"], dim=1)
    assert float(probs.max(dim=1).values.mean()) > 0.2  # a few classes stand out, as with trained weights
    assert len(set(outputs[0].object_ids.tolist())) > 1


def test_calibration_needs_one_image() -> None:
    two = collate_images([prepare_image(np.zeros((50, 60, 3), np.uint8), CONFIG)] * 2)
    with pytest.raises(ValueError, match="exactly one image"):
        calibrate_standin(build_detector(CONFIG), two)


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu(tmp_path, shared_data) -> None:
    """benchmarks/gpu_extract.py --device cpu --quick: every precision the CPU has, with its quality figures."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HOME=str(tmp_path))  # the stand-in cache goes to tmp_path
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_extract.py"), "--device", "cpu",
                             "--quick", "--repeats", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("fp32: batch  1:") and "reference" in line for line in lines), result.stdout
    bf16 = next(line for line in lines if line.startswith("bf16: batch  1:"))
    assert "boxes matched" in bf16 and "feature cosine" in bf16
    assert any(line.startswith("fp16: skipped") for line in lines)
    assert list((tmp_path / ".cache" / "scan-pipeline" / "standin").glob("R18-C4-demo-*.pt"))
