"""The extraction plan: decided once, saved without machine paths, run shard by shard by other processes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import InProcessRunner, RunConfig
from extractors.loader import images_in_directory
from extractors.plan import PLAN_FILE, ExtractionPlan, plan_extraction
from pipeline.atomic import temp_path_for
from pipeline.errors import InputError
from pipeline.store import StoreConfig, StoreReader, verify_store

CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu", min_boxes=2, max_boxes=4, rpn_pre_nms_topk=100,
                         rpn_post_nms_topk=4)


@pytest.fixture
def images(shared_data: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for photo in sorted((shared_data / "flickr8k" / "images").glob("*.jpg"))[:5]:
        shutil.copy(photo, folder / photo.name)
    return folder


def test_a_saved_plan_is_run_shard_by_shard_and_committed(images: Path, tmp_path: Path) -> None:
    files, store = images_in_directory(images), tmp_path / "store"
    plan = plan_extraction(files, store, CONFIG, store=StoreConfig(shard_size=2)).save()
    saved = (store / PLAN_FILE).read_text()
    assert str(tmp_path) not in saved and json.loads(saved)["image_ids"] == [f.image_id for f in files]
    loaded = ExtractionPlan.load(store)
    assert loaded == plan and [len(shard.images) for shard in loaded.shards] == [2, 2, 1]

    stale = temp_path_for(loaded.shards[1].path)  # a shard task killed earlier left this
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a shard")
    runner = InProcessRunner(CONFIG, RunConfig(num_workers=0), detector=build_detector(CONFIG), progress=False)
    for index in (2, 0):  # any order, one job at a time, as separate Luigi tasks run them
        [result] = runner.run([loaded.job(index, files)])
        assert result.index == index
    assert [job.plan.index for job in loaded.jobs(files)] == [1]  # what a resumed run still has to do
    list(runner.run(loaded.jobs(files)))
    assert not stale.exists()
    loaded.commit()
    assert not (store / PLAN_FILE).exists() and verify_store(store) == []
    assert StoreReader(store).image_ids == [f.image_id for f in files]
    assert plan_extraction(files, store, CONFIG, store=StoreConfig(shard_size=2)).shards == ()


def test_plan_errors_name_the_plan_file(images: Path, tmp_path: Path) -> None:
    files, store = images_in_directory(images), tmp_path / "store"
    plan = plan_extraction(files, store, CONFIG, store=StoreConfig(shard_size=10)).save()
    with pytest.raises(InputError, match="shard 7 is not part of this plan"):
        plan.job(7, files)
    with pytest.raises(InputError, match="no longer in the dataset"):
        plan.job(0, files[1:])
    (store / PLAN_FILE).write_text('{"shards": 3}')
    with pytest.raises(InputError, match="plan.json.*not an extraction plan"):
        ExtractionPlan.load(store)
    assert ExtractionPlan.load(tmp_path / "elsewhere") is None


def test_a_file_that_cannot_be_read_is_planned_not_raised(images: Path, tmp_path: Path) -> None:
    """Hashing happens before decoding; an unreadable file is left for decoding to record as a failure."""
    files = images_in_directory(images)
    (images / files[0].relpath).unlink()
    plan = plan_extraction(files, tmp_path / "store", CONFIG)
    [shard] = plan.shards
    assert shard.images[0].sha256 == "" and all(len(source.sha256) == 64 for source in shard.images[1:])
    assert len(shard.images) == 5 and plan.skipped == 0
