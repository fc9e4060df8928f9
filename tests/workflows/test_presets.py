"""One preset registry: the Luigi tasks and `python -m extractors` build the same configs from it."""
from __future__ import annotations

import pytest
from PIL import Image

from extractors.__main__ import build_parser, extraction_configs
from extractors.calibration import calibration_digest
from extractors.config import PRESETS
from pipeline.config import DATASET_NAMES
from workflows import FeatureStore

OVERRIDES = ({}, {"min_boxes": 10, "max_boxes": 20, "shard_size": 7, "feature_dtype": "float16", "test_short_side": 100,
                 "amp_dtype": "auto", "roi_batch_size": 8, "runtime": "onnxruntime", "device": "cpu"})
TASK_NAMES = {"min_boxes": "extractor_min_boxes", "max_boxes": "extractor_max_boxes",
              "test_short_side": "extractor_test_short_side", "backbone": "extractor_backbone",
              "amp_dtype": "extractor_amp_dtype", "roi_batch_size": "extractor_roi_batch_size",
              "runtime": "extractor_runtime", "device": "extractor_device"}


def _cli_flags(values: dict) -> list[str]:
    return [part for name, value in values.items() for part in (f"--{name.replace('_', '-')}", str(value))]


@pytest.mark.parametrize("overrides", OVERRIDES, ids=("presets", "user-values"))
@pytest.mark.parametrize("backbone", [None, *PRESETS])
@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_workflow_and_cli_build_equal_extraction_configs(dataset: str, backbone: str | None, overrides: dict) -> None:
    values = dict(overrides, **({"backbone": backbone} if backbone else {}))
    args = build_parser().parse_args(["extract", "--dataset", dataset, "--store", "unused", *_cli_flags(values)])
    extractor, store, run, _ = extraction_configs(args)
    task = FeatureStore(dataset=dataset, **{TASK_NAMES.get(name, name): value for name, value in values.items()})
    assert (extractor, store, run) == (task.extractor_config(), task.store_config(), task.run_config())
    assert (extractor.test_short_side, extractor.test_max_side) == (
        values.get("test_short_side", extractor.spec.short_side), extractor.spec.max_side)


def test_the_demo_backbone_resizes_as_its_preset_wherever_it_is_chosen() -> None:
    """The divergence issue 13 found: R18-C4-demo on another dataset resized to 600/1000 in the workflow."""
    config = FeatureStore(dataset="f8k", extractor_backbone="R18-C4-demo").extractor_config()
    assert (config.test_short_side, config.test_max_side) == (128, 160)
    assert FeatureStore(dataset="demo").extractor_config().backbone == "R18-C4-demo"
    assert FeatureStore(dataset="f30k").extractor_config().test_short_side == 600


def test_precision_is_part_of_the_store_key_and_the_res5_batch_and_runtime_are_not() -> None:
    """A bf16 store never shares a directory with a float32 one; the proposals per res5 pass only split work,
    and whose float32 kernels run the network gives the same regions (tests/extractors/test_onnx_runtime.py)."""
    params = dict(FeatureStore.get_params())
    assert params["extractor_amp_dtype"].significant and not params["extractor_roi_batch_size"].significant
    assert not params["extractor_runtime"].significant
    onnx = FeatureStore(dataset="f30k", extractor_runtime="onnxruntime", extractor_device="cpu").extractor_config()
    assert onnx.runtime == "onnxruntime"
    plain = FeatureStore(dataset="f30k", extractor_device="cpu").extractor_config()
    assert onnx.feature_settings() == plain.feature_settings()
    bf16 = FeatureStore(dataset="f30k", extractor_amp_dtype="bf16", extractor_device="cpu").extractor_config()
    fp32 = FeatureStore(dataset="f30k", extractor_device="cpu").extractor_config()
    assert bf16.feature_settings() != fp32.feature_settings()
    assert bf16.feature_settings() == dict(fp32.feature_settings(), amp_dtype="bf16")


def test_int8_calibration_photos_count_by_content_from_the_cli_and_the_workflow(tmp_path) -> None:
    """The folder is a runtime detail (not significant); the photos' digest is in the store key of both."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 90)).save(folder / "photo.png")
    params = dict(FeatureStore.get_params())
    assert not params["extractor_int8_calibration"].significant
    args = build_parser().parse_args(["extract", "--dataset", "f30k", "--store", "unused", "--runtime", "onnxruntime",
                                      "--device", "cpu", "--int8-calibration", str(folder)])
    task = FeatureStore(dataset="f30k", extractor_runtime="onnxruntime", extractor_device="cpu",
                        extractor_int8_calibration=str(folder))
    assert extraction_configs(args)[0] == task.extractor_config()
    assert task.extractor_config().feature_settings()["int8_calibration_sha256"] == calibration_digest(folder)
