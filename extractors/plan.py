"""What one extraction run into a store still has to do, decided once, as shard jobs any process can run.

`plan_extraction` prepares the store (store.json checked or written, abandoned temp files of the
manifest removed), hashes the images and splits those not stored yet (new, or changed since) into new
shards. The plan can be saved in the store (`plan.json`, ids and relative paths only, no machine
paths), so that other processes (Luigi workers, possibly on other machines) each run one shard of it,
and the run that planned it commits the manifest once they are done.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from extractors.config import ExtractorConfig
from extractors.loader import ImageFile
from extractors.weights import fetch_weights, read_weights
from pipeline.atomic import remove_abandoned_temp_files
from pipeline.errors import InputError
from pipeline.fingerprints import FileHashCache
from pipeline.store.layout import SHARDS_DIR, STORE_JSON, completed_shards, read_store_info
from pipeline.store.verify import unusable_shards
from pipeline.store import (ImageSource, ShardPlan, StoreConfig, StoreInfo, adopt_shards, commit_manifest, init_store,
                            plan_shards, shard_path)
from pipeline.workspace import write_json_atomic

PLAN_FILE = "plan.json"
log = logging.getLogger(__name__)
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

    def commit(self, *, prune: bool = False) -> None:
        """Once every shard is written: the manifest, and the plan is done with.

        The manifest keeps the images it listed and adds this run's (adding never removes); with
        `prune` it lists exactly this run's images (their shards stay either way).
        """
        commit_manifest(self.store_dir, self.image_ids, keep_listed=not prune)
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


def store_info_for(config: ExtractorConfig, feature_dtype: str, given_boxes: bool = False,
                   hashes: Optional[FileHashCache] = None) -> StoreInfo:
    """What store.json records: D, K, dtype, the settings that decide the features, the weights' sha256.

    Weights are identified by content only (the same file by another path is the same store); given-boxes
    stores say so, and never mix with detected ones (each image's boxes are part of its source digest).
    """
    settings = config.feature_settings()
    if given_boxes:
        settings["given_boxes"] = True
    weights, settings["attribute_head"] = "", True  # a random init has one
    if config.weights:  # a URL is downloaded (once, into the cache) so its content is what gets hashed
        path = fetch_weights(config.weights, sha256=config.weights_sha256, cache_dir=config.cache_dir)
        weights = (hashes or FileHashCache(None)).sha256(path)
        settings["attribute_head"] = read_weights(config).with_attributes  # without: attr_ids, attr_conf are 0
    return StoreInfo(feature_dim=config.spec.feature_dim, max_boxes=config.max_boxes, feature_dtype=feature_dtype,
                     extractor=settings, weights_sha256=weights)


def source_digest(file_sha256: str, boxes: Optional[np.ndarray] = None) -> str:
    """An image's identity in the store: its file's sha256, and in given-boxes mode its boxes too.

    So changing a file, or the boxes given for it, re-extracts exactly that image.
    """
    if boxes is None or not file_sha256:
        return file_sha256
    return hashlib.sha256(f"{file_sha256}:{np.asarray(boxes, dtype=np.float32).tobytes().hex()}".encode()).hexdigest()


def plan_extraction(images: Sequence[Any], store_dir: str | PathLike[str], config: ExtractorConfig, *,
                    store: StoreConfig = StoreConfig(), retry_failed: bool = False, boxes: Optional[Boxes] = None,
                    hashes: Optional[FileHashCache] = None, adopt_from: Sequence[Path] = ()) -> ExtractionPlan:
    """Prepare the store and decide which of `images` go into which new shard.

    `images`: anything with image_id, path, relpath (ImageFile, pipeline.datasets.ImageRecord). `boxes`
    (given-boxes mode) must name every image. `hashes` remembers file digests between runs; an unreadable
    file gets an empty digest and is planned (decoding then records why it failed). A new store first
    adopts the shards of the most complete store of `adopt_from` made the same way (hard links), so only
    images it does not hold are planned.
    """
    store_dir, hashes = Path(store_dir), hashes or FileHashCache(None)
    if boxes is not None:
        missing = [image.image_id for image in images if image.image_id not in boxes]
        if missing:
            raise ValueError(f"given-boxes mode: {len(missing)} images have no boxes (first: {missing[0]!r})")
    info = init_store(store_dir, store_info_for(config, store.feature_dtype, boxes is not None, hashes))
    _adopt_best(store_dir, info, adopt_from)
    for folder in (store_dir, store_dir / SHARDS_DIR):  # no shard of this run is being written yet
        remove_abandoned_temp_files(folder)
    for shard in unusable_shards(store_dir):  # truncated or foreign: its images are planned again below
        log.warning("%s is unusable (truncated, corrupt or from another store); deleting it and extracting its images "
                    "again", shard)
        shard.unlink()
    sources = [(image.image_id, image.relpath,
                source_digest(hashes.sha256(image.path), None if boxes is None else boxes[image.image_id]))
               for image in images]
    shards = plan_shards(sources, store_dir, store.shard_size, retry_failed=retry_failed)
    planned = sum(len(shard.images) for shard in shards)
    return ExtractionPlan(store_dir, tuple(image.image_id for image in images), tuple(shards), len(images) - planned)


def _adopt_best(store_dir: Path, info: StoreInfo, candidates: Sequence[Path]) -> None:
    """Into a store without shards, the shards of the candidate store with the same StoreInfo holding most."""
    if completed_shards(store_dir):
        return
    same = [path for path in candidates if (path / STORE_JSON).is_file() and read_store_info(path) == info]
    best = max(same, key=lambda path: len(completed_shards(path)), default=None)
    if best is not None and completed_shards(best):
        log.info("%s: adopting the %d shards of %s (same extractor and weights)", store_dir,
                 adopt_shards(best, store_dir), best)
