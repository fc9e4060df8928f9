"""Reduced precision: CPU flag detection, `auto` and its fallback, bf16 on the CPU, and stores that never mix."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from extractors import precision
from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import InProcessRunner, RunConfig, extract_dataset
from extractors.loader import images_in_directory
from extractors.preprocess import collate_images, prepare_image
from extractors.quality import cosines
from pipeline.errors import InputError
from pipeline.store import StoreConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Small: bf16 on a CPU without bf16 instructions is emulated, tens of times slower than float32.
SMALL = dict(backbone="R18-C4-demo", device="cpu", test_short_side=64, test_max_side=80)
BOXES = [np.array([[10, 20, 200, 300], [0, 0, 300, 200], [50, 60, 120, 160]], dtype=np.float32)]
AVX2_ONLY = frozenset({"avx", "avx2", "fma"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: SAPPHIRE_RAPIDS)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\nbogomips\t: 4890\n")
    flags = precision.cpu_flags.__wrapped__(str(cpuinfo))
    assert flags == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
    assert precision.cpu_has_native_bf16(flags)
    assert not precision.cpu_has_native_bf16(AVX2_ONLY)
    assert precision.cpu_flags.__wrapped__(str(tmp_path / "absent")) == frozenset()


def test_auto_is_resolved_when_the_config_is_made_and_recorded_as_resolved(cpu_without_bf16) -> None:
    config = ExtractorConfig(device="cpu", amp_dtype="auto")
    assert config.amp_dtype == "" and config.feature_settings()["amp_dtype"] == ""


def test_auto_picks_bf16_on_a_cpu_with_bf16_instructions(cpu_with_bf16) -> None:
    config = ExtractorConfig(device="cpu", amp_dtype="auto")
    assert config.amp_dtype == "bf16" and config.feature_settings()["amp_dtype"] == "bf16"


def test_fp16_on_a_cpu_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        ExtractorConfig(device="cpu", amp_dtype="fp16")


def test_bf16_on_a_cpu_without_bf16_runs_with_a_warning(cpu_without_bf16, caplog) -> None:
    assert ExtractorConfig(device="cpu", amp_dtype="bf16").amp_dtype == "bf16"
    assert "emulates" in caplog.text


def _conv_dtypes(detector, batch, given) -> set[torch.dtype]:
    seen = set()
    hook = detector.backbone.stem.conv1.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    try:
        detector(batch, given_boxes=given)
    finally:
        hook.remove()
    return seen


def test_forced_fallback_runs_the_plain_float32_path(cpu_without_bf16, shared_data) -> None:
    """No slowdown without bf16: `auto` is then exactly the float32 path (no autocast, identical features)."""
    photo = _photo(shared_data)
    plain, auto = ExtractorConfig(**SMALL), ExtractorConfig(**SMALL, amp_dtype="auto")
    batch = collate_images([prepare_image(photo, plain)])
    plain_detector, auto_detector = build_detector(plain), build_detector(auto)
    assert _conv_dtypes(auto_detector, batch, BOXES) == {torch.float32}
    np.testing.assert_array_equal(auto_detector(batch, given_boxes=BOXES)[0].features,
                                  plain_detector(batch, given_boxes=BOXES)[0].features)


def test_bf16_on_the_cpu_autocasts_and_stays_close_to_float32(shared_data) -> None:
    photo = _photo(shared_data)
    plain, half = ExtractorConfig(**SMALL), ExtractorConfig(**SMALL, amp_dtype="bf16")
    batch = collate_images([prepare_image(photo, plain)])
    half_detector = build_detector(half)
    assert _conv_dtypes(half_detector, batch, BOXES) == {torch.bfloat16}  # folded norms keep it bf16
    full, reduced = build_detector(plain)(batch, given_boxes=BOXES)[0], half_detector(batch, given_boxes=BOXES)[0]
    assert reduced.features.dtype == np.float32
    assert cosines(full.features, reduced.features).min() > 0.999
    assert not np.array_equal(full.features, reduced.features)


def _photo(shared_data: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(shared_data / "butd_demo_images" / "000456.jpg").convert("RGB"))


def test_a_bf16_store_records_it_and_never_takes_float32_shards(tmp_path, shared_data) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted((shared_data / "flickr8k" / "images").glob("*.jpg"))[:2]:
        shutil.copy(photo, images / photo.name)
    files = images_in_directory(images)
    boxes = {image.image_id: BOXES[0] for image in files}
    store, run = tmp_path / "store", RunConfig(num_workers=0)

    def extract(config: ExtractorConfig):
        return extract_dataset(files, store, config, store=StoreConfig(), run=run, boxes=boxes, progress=False,
                               runner=InProcessRunner(config, run, progress=False))

    assert extract(ExtractorConfig(**SMALL, amp_dtype="bf16")).extracted == 2
    assert json.loads((store / "store.json").read_text())["extractor"]["amp_dtype"] == "bf16"
    with pytest.raises(InputError, match="different extractor"):
        extract(ExtractorConfig(**SMALL))
