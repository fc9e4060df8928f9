"""Real datasets without their files fail fast, naming the missing file and where to get it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import luigi
import luigi.retcodes
import pytest

from workflows import FeatureStore


@pytest.mark.parametrize(("dataset", "missing", "hint"), [
    ("f30k", "f30k/dataset_flickr30k.json", "caption_datasets.zip"),
    ("coco", "coco/dataset_coco.json", "cocodataset.org"),
])
def test_absent_dataset_exits_with_missing_data_code_and_a_hint(dataset: str, missing: str, hint: str, tmp_path: Path,
                                                                workspace: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="luigi-interface")
    with pytest.raises(SystemExit) as exit_info:
        luigi.retcodes.run_with_retcodes(["--module", "workflows", "TrainSCAN", "--dataset", dataset,
                                          "--data-root", str(tmp_path / "data"), "--local-scheduler", "--no-lock"])
    assert exit_info.value.code == luigi.configuration.get_config().getint("retcode", "missing_data")
    assert str(tmp_path / "data" / missing) in caplog.text and hint in caplog.text
    assert not workspace.exists() or not list(workspace.rglob("_COMPLETE.json"))


def test_real_dataset_without_detector_weights_fails_naming_the_flag(shared_data: Path, workspace: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The mini subset holds only val and test images; a third of them become train so the dataset passes
    the trainability check and the missing weights are what stops the run."""
    mini = shared_data / "f30k_mini"
    karpathy = json.loads((mini / "dataset_flickr30k_subset.json").read_text())
    for image in karpathy["images"][::3]:
        image["split"] = "train"
    captions_file = tmp_path / "dataset_flickr30k_subset.json"
    captions_file.write_text(json.dumps(karpathy))
    task = FeatureStore(dataset="f30k", data_root=shared_data, image_dir=mini / "images",
                        captions_file=captions_file)
    result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    assert result.status == luigi.execution_summary.LuigiStatusCode.FAILED
    assert "--extractor-weights" in caplog.text and "faster_rcnn_from_caffe_attr.pkl" in caplog.text
    assert not (task.artifact_dir / "_COMPLETE.json").exists()
