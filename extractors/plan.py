"""What one extraction run into a store still has to do, decided once, as shard jobs any process can run.

`plan_extraction` prepares the store (store.json checked or written, abandoned temp files of the
manifest removed), hashes the images and splits those not stored yet (new, or changed since) into new
shards. The plan can be saved in the store (`plan.json`, ids and relative paths only, no machine
paths), so that other processes (Luigi workers, possibly on other machines) each run one shard of it,
and the run that planned it commits the manifest once they are done.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from extractors.config import ExtractorConfig
from extractors.loader import ImageFile
from extractors.weights import fetch_weights
from pipeline.atomic import remove_abandoned_temp_files
from pipeline.errors import InputError
from pipeline.store.layout import SHARDS_DIR
from pipeline.store import (ImageSource, ShardPlan, StoreConfig, StoreInfo, commit_manifest, init_store, plan_shards,
                            sha256_file, shard_path)
from pipeline.workspace import write_json_atomic

PLAN_FILE = "plan.json"
Boxes = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ShardJob:
    """Everything needed to write one shard, picklable so a Dask worker can run it."""

    store_dir: Path
    plan: ShardPlan
    images: tuple[ImageFile, ...]
    boxes: Optional[dict[str, np.ndarray]] = None


@dataclass(frozen=True)
class ExtractionPlan:
    """The images of one run (manifest order) and the new shards that will hold those not yet stored."""

    store_dir: Path
    image_ids: tuple[str, ...]
    shards: tuple[ShardPlan, ...]
    skipped: int

    def jobs(self, images: Sequence[Any], boxes: Optional[Boxes] = None) -> list[ShardJob]:
        """One job per shard not yet published (a resumed plan skips the done ones).

        `images` (anything with image_id, path, relpath) give the files' paths.
        """
        files = _files(images)
        return [self._job(shard, files, boxes) for shard in self.shards if not shard.path.exists()]

    def job(self, index: int, images: Sequence[Any], boxes: Optional[Boxes] = None) -> ShardJob:
        """The job of shard `index` alone (one Luigi task runs one shard)."""
        shard = next((shard for shard in self.shards if shard.index == index), None)
        if shard is None:
            raise InputError(self.store_dir / PLAN_FILE, f"shard {index} is not part of this plan")
        return self._job(shard, _files(images), boxes)

    def _job(self, shard: ShardPlan, files: Mapping[str, ImageFile], boxes: Optional[Boxes]) -> ShardJob:
        missing = [source.image_id for source in shard.images if source.image_id not in files]
        if missing:
            raise InputError(self.store_dir / PLAN_FILE, f"{len(missing)} planned images are no longer in the "
                             f"dataset (first: {missing[0]!r}); delete the plan to re-plan")
        shard_boxes = None if boxes is None else {source.image_id: boxes[source.image_id] for source in shard.images}
        return ShardJob(self.store_dir, shard, tuple(files[source.image_id] for source in shard.images), shard_boxes)

    def commit(self) -> None:
        """Once every shard is written: the manifest of this run's images, and the plan is done with."""
        commit_manifest(self.store_dir, self.image_ids)
        (self.store_dir / PLAN_FILE).unlink(missing_ok=True)

    def save(self) -> "ExtractionPlan":
        write_json_atomic(self.store_dir / PLAN_FILE, {
            "image_ids": list(self.image_ids), "skipped": self.skipped,
            "shards": {str(shard.index): [list(source) for source in shard.images] for shard in self.shards}})
        return self

    @classmethod
    def load(cls, store_dir: str | PathLike[str]) -> Optional["ExtractionPlan"]:
        """The plan saved in the store, or None when there is none."""
        store_dir = Path(store_dir)
        path = store_dir / PLAN_FILE
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            shards = tuple(ShardPlan(int(index), shard_path(store_dir, int(index)),
                                     tuple(ImageSource(*source) for source in sources))
                           for index, sources in saved["shards"].items())
            return cls(store_dir, tuple(saved["image_ids"]), shards, int(saved["skipped"]))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise InputError(path, f"not an extraction plan ({error}); delete it to re-plan") from error


def _files(images: Sequence[Any]) -> dict[str, ImageFile]:
    return {image.image_id: ImageFile(image.image_id, Path(image.path), image.relpath) for image in images}


def store_info_for(config: ExtractorConfig, feature_dtype: str, boxes_sha256: str = "") -> StoreInfo:
    """What store.json records: D, K, dtype, the whole extractor config and the weights' sha256.

    Given-boxes stores record the boxes file's hash too, so they never mix with detected ones.
    """
    settings = {name: str(value) if isinstance(value, Path) else value
                for name, value in dataclasses.asdict(config).items()}
    if boxes_sha256:
        settings["given_boxes_sha256"] = boxes_sha256
    weights = ""
    if config.weights:  # a URL is downloaded (once, into the cache) so its content is what gets hashed
        weights = sha256_file(fetch_weights(config.weights, sha256=config.weights_sha256, cache_dir=config.cache_dir))
    return StoreInfo(feature_dim=config.spec.feature_dim, max_boxes=config.max_boxes, feature_dtype=feature_dtype,
                     extractor=settings, weights_sha256=weights)


def _file_sha256(path: Path) -> str:
    """sha256 of an image file; "" when it cannot be read (decoding then records why)."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


def plan_extraction(images: Sequence[Any], store_dir: str | PathLike[str], config: ExtractorConfig, *,
                    store: StoreConfig = StoreConfig(), retry_failed: bool = False, boxes: Optional[Boxes] = None,
                    boxes_sha256: str = "") -> ExtractionPlan:
    """Prepare the store and decide which of `images` go into which new shard.

    `images`: anything with image_id, path, relpath (ImageFile, pipeline.datasets.ImageRecord). `boxes`
    (given-boxes mode) must name every image; the store then records `boxes_sha256`, so given-boxes
    stores never mix with detected ones.
    """
    store_dir = Path(store_dir)
    if boxes is not None:
        missing = [image.image_id for image in images if image.image_id not in boxes]
        if missing:
            raise ValueError(f"given-boxes mode: {len(missing)} images have no boxes (first: {missing[0]!r})")
    init_store(store_dir, store_info_for(config, store.feature_dtype, boxes_sha256 if boxes is not None else ""))
    for folder in (store_dir, store_dir / SHARDS_DIR):  # no shard of this run is being written yet
        remove_abandoned_temp_files(folder)
    sources = [(image.image_id, image.relpath, _file_sha256(Path(image.path))) for image in images]
    shards = plan_shards(sources, store_dir, store.shard_size, retry_failed=retry_failed)
    planned = sum(len(shard.images) for shard in shards)
    return ExtractionPlan(store_dir, tuple(image.image_id for image in images), tuple(shards), len(images) - planned)
