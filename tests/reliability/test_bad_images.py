"""Malformed images through the real extraction path (R18-C4 demo preset, random init, real HDF5 store).

Every bad file must end up in failures.parquet with its reason; every unusual-but-valid file
must be extracted; the good images sharing a shard with bad ones must be stored exactly as when
extracted on their own.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import InProcessRunner, RunConfig, extract_dataset
from extractors.loader import ImageFile, images_in_directory
from pipeline.store import StoreReader, StoreConfig, verify_store
from tests.reliability.artifacts import machine_paths_in, store_rows
from tests.reliability.bad_files import bad_image_files, odd_but_valid_image_files, one_pixel_png, write_files

# batch_size=1: each image's features depend on that image alone, so stores can be compared row by row.
CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu", batch_size=1, min_boxes=2, max_boxes=4,
                                    rpn_pre_nms_topk=100, rpn_post_nms_topk=4)
RUN = RunConfig(num_workers=0)


@pytest.fixture(scope="module")
def detector():
    return build_detector(CONFIG)


def _extract(images: list[ImageFile], store: Path, detector, shard_size: int = 4):
    runner = InProcessRunner(CONFIG, RUN, detector=detector, progress=False)
    return extract_dataset(images, store, CONFIG, store=StoreConfig(shard_size=shard_size), run=RUN,
                           runner=runner, progress=False)


def _rows(store: Path) -> dict[str, bytes]:
    return store_rows(store, ("features", "boxes", "num_boxes", "object_ids", "image_hw"))


def _unreadable_file(folder: Path) -> tuple[str, bool]:
    """chmod 000 file; returns (name, whether this process can still read it: root can)."""
    path = folder / "no-permission.jpg"
    path.write_bytes((folder / "name with spaces.jpg").read_bytes())
    path.chmod(0)
    return path.name, os.access(path, os.R_OK)


@pytest.mark.slow
def test_bad_images_are_recorded_and_good_neighbours_are_intact(tmp_path, detector) -> None:
    folder = tmp_path / "images"
    bad = bad_image_files(seed=7)
    write_files(folder, {name: data for name, (data, _) in bad.items()})
    write_files(folder, odd_but_valid_image_files(seed=7))
    os.symlink("loop-b.jpg", folder / "loop-a.jpg")
    os.symlink("loop-a.jpg", folder / "loop-b.jpg")
    unreadable, readable_anyway = _unreadable_file(folder)

    images = images_in_directory(folder)
    summary = _extract(images, tmp_path / "store", detector)

    failures = pq.read_table(tmp_path / "store" / "failures.parquet").to_pydict()
    reasons = dict(zip(failures["relpath"], failures["reason"]))
    expected = {name: why for name, (_, why) in bad.items()}
    expected.update({"loop-a.jpg": "symbolic link loop", "loop-b.jpg": "symbolic link loop"})
    if not readable_anyway:  # as root, chmod 000 does not stop reads: the file is then a good image
        expected[unreadable] = "permission denied"
    assert set(reasons) == set(expected), reasons
    for name, why in expected.items():
        assert why.lower() in reasons[name].lower(), (name, reasons[name])
    assert summary.failed == len(expected)

    store = StoreReader(tmp_path / "store")
    good = set(odd_but_valid_image_files(seed=7)) | ({unreadable} if readable_anyway else set())
    assert {Path(i).name for i in store.image_ids} == {Path(name).with_suffix("").name for name in good}
    assert store.get("exif-rotated").image_hw == (96, 72)  # stored upright: EXIF orientation applied
    assert verify_store(tmp_path / "store") == []
    assert machine_paths_in(tmp_path / "store", tmp_path) == []  # relative paths only, in shards and tables

    # the good images, extracted alone, give byte-identical rows: the bad neighbours changed nothing
    alone = [image for image in images if image.relpath in good]
    _extract(alone, tmp_path / "alone", detector)
    assert _rows(tmp_path / "store") == _rows(tmp_path / "alone")


def test_bad_image_in_an_existing_store_loses_nothing(tmp_path, detector) -> None:
    """A re-run that meets only bad new files keeps every earlier shard byte for byte."""
    folder = tmp_path / "images"
    write_files(folder, {name: data for name, data in list(odd_but_valid_image_files(seed=3).items())[:2]})
    _extract(images_in_directory(folder), tmp_path / "store", detector)
    before = {path.name: path.read_bytes() for path in (tmp_path / "store" / "shards").iterdir()}
    (folder / "truncated.jpg").write_bytes(bad_image_files(seed=3)["truncated-jpeg.jpg"][0])
    # plus one good new image: a shard of failures only is a known, separately tracked ShardWriter bug
    (folder / "new.jpg").write_bytes(odd_but_valid_image_files(seed=4)["name with spaces.jpg"])
    summary = _extract(images_in_directory(folder), tmp_path / "store", detector)
    assert (summary.extracted, summary.skipped, summary.failed) == (1, 2, 1)
    after = {path.name: path.read_bytes() for path in (tmp_path / "store" / "shards").iterdir()}
    assert {name: after[name] for name in before} == before
    assert verify_store(tmp_path / "store") == []


def test_one_pixel_image_is_extracted_or_recorded_without_stopping_the_run(tmp_path, detector) -> None:
    folder = tmp_path / "images"
    write_files(folder, {"one-pixel.png": one_pixel_png(), **dict(list(odd_but_valid_image_files(seed=5).items())[:1])})
    summary = _extract(images_in_directory(folder), tmp_path / "store", detector)
    assert summary.extracted + summary.failed == 2 and summary.extracted >= 1
    failures = pq.read_table(tmp_path / "store" / "failures.parquet").to_pydict()
    assert all("region" in reason for reason in failures["reason"])
    assert verify_store(tmp_path / "store") == []
