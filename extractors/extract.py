"""Images on disk -> a sharded feature store: plan the shards still missing, fill them, commit.

A shard is the unit of work and of atomicity: it is written to a temp file and renamed when
complete, and planning skips every image already stored with the same sha256. So a crash at any
point loses at most the shard in progress, and re-running the same command resumes; because
batches are formed from each shard's image order alone, the resumed store is byte-identical
to an uninterrupted one.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np
import onnxruntime
import torch
from tqdm import tqdm

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.images import DEFAULT_MAX_PIXELS
from extractors.loader import ImageFile, LoadedBatch, load_batches
from extractors.plan import ShardJob, plan_extraction
from extractors.threads import torch_threads
from pipeline.atomic import remove_abandoned_temp_files
from pipeline.devices import resolve_device
from pipeline.errors import InputError
from pipeline.fingerprints import FileHashCache
from pipeline.store import RegionRecord, ShardPlan, ShardWriter, StoreConfig

# HDF5 attribute of each shard: JSON of run_settings(), the runtime, threads, device and batch sizes that made it.
SHARD_RUN_ATTR = "extraction_run"


@dataclass(frozen=True)
class RunConfig:
    """How an extraction run goes about its work; only torch_threads can change the features (in the last bits)."""

    num_workers: int = field(default=2, metadata={"help": "DataLoader processes decoding images "
                                                          "(0: decode in the extracting process)."})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "Refuse images with more pixels than this, before decoding them (decompression bombs)."})
    fail_fast: bool = field(default=False, metadata={"help": "Stop at the first unreadable image "
                                                             "instead of recording it in failures.parquet."})
    retry_failed: bool = field(default=False, metadata={"help": "Try again the images that failed in an earlier run "
                                                                "(they are skipped otherwise)."})
    torch_threads: int = field(default=0, metadata={"help": "CPU threads of the detector (0: PyTorch's default; "
                                                          "Dask workers: 1). Features are bit-identical only between "
                                                          "runs with the same count."})

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.torch_threads < 0 or self.max_pixels < 1:
            raise ValueError(f"num_workers={self.num_workers}, torch_threads={self.torch_threads}, "
                             f"max_pixels={self.max_pixels}; expected >= 0, >= 0 and >= 1")


@dataclass(frozen=True)
class DaskConfig:
    """Where --dask runs shard tasks (extractors.distributed): a LocalCluster started here, or an existing scheduler."""

    scheduler_address: str = field(default="", metadata={"help": "Existing scheduler, e.g. tcp://host:8786; "
                                                                 "empty = start a LocalCluster."})
    n_workers: int = field(default=2, metadata={"help": "LocalCluster worker processes "
                                                        "(one detector each, one thread each)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface the LocalCluster's scheduler "
                                                             "and workers bind to."})

    def __post_init__(self) -> None:
        if self.n_workers < 1:
            raise ValueError(f"n_workers={self.n_workers}; expected at least one worker")


@dataclass(frozen=True)
class ShardResult:
    """One written shard: its index, rows written, and (image_id, reason) of the images that failed."""

    index: int
    extracted: int
    failed: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ExtractionSummary:
    """What a run did; printed at the end of `python -m extractors extract`."""

    store_dir: Path
    extracted: int
    skipped: int
    failed: int
    shards_written: int
    seconds: float
    failures: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        rate = self.extracted / self.seconds if self.seconds > 0 else 0.0
        lines = [f"store {self.store_dir}: {self.extracted} extracted, {self.skipped} skipped (already stored), "
                 f"{self.failed} failed; {self.shards_written} shard(s) written in "
                 f"{self.seconds:.1f} s ({rate:.2f} images/s)"]
        lines += [f"  failed: {image_id}: {reason}" for image_id, reason in self.failures[:20]]
        if self.failed > 20:
            lines.append(f"  ... and {self.failed - 20} more, all listed in {self.store_dir / 'failures.parquet'}")
        return "\n".join(lines)


class ShardRunner(Protocol):
    """Runs shard jobs somewhere (this process, a Dask cluster) and yields their results as they finish."""

    def run(self, jobs: Sequence[ShardJob]) -> Iterator[ShardResult]: ...


def _record(image: ImageFile, output: Any, image_hw: tuple[int, int]) -> RegionRecord:
    return RegionRecord(image_id=image.image_id, features=output.features, boxes=output.boxes,
                        object_ids=output.object_ids, object_conf=output.object_conf, attr_ids=output.attr_ids,
                        attr_conf=output.attr_conf, image_hw=image_hw)


def run_settings(config: ExtractorConfig) -> dict[str, Any]:
    """How a shard's features were computed, beyond the store's identity: recorded in each shard, since a store
    may be filled by runs that differ in these (they change features only at float32 rounding)."""
    onnx = onnxruntime.__version__ if config.runtime == "onnxruntime" else ""
    return {"runtime": config.runtime, "onnxruntime": onnx, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(resolve_device(config.device)),
            "batch_size": config.batch_size, "roi_batch_size": config.roi_batch_size}


def extract_shard(job: ShardJob, detector: Any, config: ExtractorConfig, run: RunConfig,
                  progress: Optional[tqdm] = None) -> ShardResult:
    """Detect regions in the job's images and publish them as one shard; unreadable images become failures.

    With `run.fail_fast` the first unreadable image raises BadImageError and nothing of this shard
    is published (shards completed earlier stay).
    """
    failed: list[tuple[str, str]] = []
    remove_abandoned_temp_files(job.plan.path.parent, job.plan.path.name)  # one task writes each shard
    with ShardWriter.for_store(job.store_dir, job.plan.index, {SHARD_RUN_ATTR: run_settings(config)}) as writer:
        for loaded in load_batches(job.images, config, batch_size=config.batch_size, num_workers=run.num_workers,
                                   max_pixels=run.max_pixels, fail_fast=run.fail_fast, boxes=job.boxes):
            failed += _write_batch(writer, loaded, detector, job.plan)
            if progress is not None:
                progress.update(len(loaded.images) + len(loaded.failures))
        extracted = len(writer)
    return ShardResult(job.plan.index, extracted, tuple(failed))


def _write_batch(writer: ShardWriter, loaded: LoadedBatch, detector: Any, plan: ShardPlan) -> list[tuple[str, str]]:
    """Run the detector on one batch and append its regions; return the (image_id, reason) that failed.

    An image without a single region (e.g. a few pixels wide: every proposal is below rpn_min_size)
    has nothing to store, so it is a failure like an unreadable file, not a reason to stop the run.
    """
    sha = {source.image_id: source.sha256 for source in plan.images}
    failures = [(failure.image, failure.reason) for failure in loaded.failures]
    if loaded.batch is not None:
        outputs = detector(loaded.batch, given_boxes=loaded.boxes)
        for image, output, image_hw in zip(loaded.images, outputs, loaded.batch.original_hw):
            if len(output.boxes):
                writer.append(_record(image, output, image_hw), relpath=image.relpath, sha256=sha[image.image_id])
            else:
                failures.append((image, f"the detector found no region in this {image_hw[1]}x{image_hw[0]} image"))
    for image, reason in failures:
        writer.add_failure(image.image_id, reason, relpath=image.relpath, sha256=sha[image.image_id])
    return [(image.image_id, reason) for image, reason in failures]


class InProcessRunner:
    """Runs shards one after another in this process; the detector is built on first use unless given."""

    def __init__(self, config: ExtractorConfig, run: RunConfig, *, detector: Any = None, progress: bool = True) -> None:
        self.config, self.run_config, self.progress = config, run, progress
        self._detector = detector

    def run(self, jobs: Sequence[ShardJob]) -> Iterator[ShardResult]:
        if self._detector is None:
            self._detector = build_detector(self.config)
        total = sum(len(job.images) for job in jobs)
        with tqdm(total=total, unit="img", desc="extract", disable=not self.progress) as bar, \
                torch_threads(self.run_config.torch_threads):
            for job in jobs:
                yield extract_shard(job, self._detector, self.config, self.run_config, bar)




def load_boxes_json(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """Ground-truth boxes `{image_id: [[x1, y1, x2, y2], ...]}` (original pixels) as (K, 4) float32."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"cannot read boxes JSON ({error})") from error
    if not isinstance(raw, dict):
        raise InputError(path, "expected an object {image_id: [[x1, y1, x2, y2], ...]}")
    boxes = {}
    for image_id, entry in raw.items():
        try:
            array = np.asarray(entry, dtype=np.float32).reshape(-1, 4) if len(entry) else None
        except (TypeError, ValueError):
            array = None
        if array is None or np.ndim(entry) != 2 or not np.isfinite(array).all() or (array[:, 2:] <= array[:, :2]).any():
            raise InputError(path, "expected a non-empty list of [x1, y1, x2, y2] with x1 < x2, y1 < y2",
                             location=f"key {image_id!r}")
        boxes[str(image_id)] = array
    return boxes


def extract_dataset(images: Sequence[Any], store_dir: str | PathLike[str], config: ExtractorConfig, *,
                    store: StoreConfig = StoreConfig(), run: RunConfig = RunConfig(),
                    boxes: Optional[Mapping[str, np.ndarray]] = None, runner: Optional[ShardRunner] = None,
                    hashes: Optional[FileHashCache] = None, prune: bool = False,
                    progress: bool = True) -> ExtractionSummary:
    """Extract every image not yet in the store (new or changed), then commit the manifest.

    `images`: ImageFile or pipeline.datasets.ImageRecord (anything with image_id, path, relpath); the
    manifest adds them in this order to the images it already lists (only them with `prune`). `boxes`
    switches to given-boxes mode (one (K, 4) array per image). Unreadable images are recorded in
    failures.parquet and counted, not raised.
    """
    started = time.perf_counter()
    plan = plan_extraction(images, store_dir, config, store=store, retry_failed=run.retry_failed, boxes=boxes,
                           hashes=hashes)
    jobs = plan.jobs(images, boxes)
    runner = runner or InProcessRunner(config, run, progress=progress)
    results = list(runner.run(jobs)) if jobs else []
    plan.commit(prune=prune)
    failures = tuple(failure for result in sorted(results, key=lambda r: r.index) for failure in result.failed)
    return ExtractionSummary(plan.store_dir, sum(r.extracted for r in results), plan.skipped, len(failures),
                             len(results), time.perf_counter() - started, failures)
