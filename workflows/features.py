"""Region features: extracted shard by shard into a store, or imported from published formats.

`--features extract` (default) runs the detector through the library's extraction plan
(`extractors.plan`): FeatureStore plans the run once (saved as the store's plan.json), then
ExtractFeatures tasks write `shards/shard-NNNNN.h5`, a few shards each (or, with `--executor dask`,
all shards run on a Dask cluster), and FeatureStore commits the manifest. `--features precomp:DIR`, `tsv:FILE` or
`npz:DIR` import SCAN precomp / BUTD TSV / MILVLG npz files instead (workflows.imports).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import luigi

from extractors.config import RUNTIME_FIELDS, ExtractorConfig
from extractors.extract import DaskConfig, InProcessRunner, RunConfig, load_boxes_json
from extractors.plan import ExtractionPlan, plan_extraction
from extractors.weights import require_weights
from pipeline.datasets import Dataset
from pipeline.fingerprints import images_fingerprint
from pipeline.presets import presets_for
from pipeline.store import StoreConfig, read_failures, shard_path, verify_store
from pipeline.workspace import sibling_artifacts
from workflows.base import config_settings
from workflows.data import DatasetTask
from workflows.params import config_of, config_parameters

STORE_SUBDIR = "store"
log = logging.getLogger("luigi-interface")


@config_parameters(ExtractorConfig, prefix="extractor_", insignificant=RUNTIME_FIELDS)  # weights count by content
@config_parameters(RunConfig, insignificant=RunConfig.__dataclass_fields__)
@config_parameters(StoreConfig)
@config_parameters(DaskConfig, prefix="dask_", insignificant=DaskConfig.__dataclass_fields__)
class ExtractorParams:
    """Detector, run and store settings as parameters; the dataset's presets fill in what is not set."""

    executor = luigi.ChoiceParameter(choices=("luigi", "dask"), default="luigi", significant=False,
                                     description="luigi: ExtractFeatures tasks of --shards-per-task shards each "
                                                 "(parallel with --workers); dask: one Dask task per shard.")
    shards_per_task = luigi.IntParameter(default=8, significant=False,
                                         description="Shards one ExtractFeatures task writes with one detector build "
                                                     "(a crash loses only the shard being written).")

    def extractor_config(self) -> ExtractorConfig:
        return config_of(self, ExtractorConfig, presets_for(self.dataset).extractor)

    def run_config(self) -> RunConfig:
        return config_of(self, RunConfig)

    def store_config(self) -> StoreConfig:
        return config_of(self, StoreConfig, presets_for(self.dataset).store)


class FeatureTask(ExtractorParams, DatasetTask):
    """Shared by the store and its shards: the store lives in FeatureStore's artifact dir."""

    def store_dir(self) -> Path:
        return self.clone(FeatureStore).artifact_dir / STORE_SUBDIR

    def given_boxes(self, dataset: Dataset) -> Optional[dict[str, Any]]:
        """Ground-truth boxes when the dataset ships them (the demo): regions are those boxes."""
        return None if dataset.boxes_file is None else load_boxes_json(dataset.boxes_file)


class ExtractFeatures(FeatureTask):
    """Consecutive shards of the store's plan, with one detector: `store/shards/shard-NNNNN.h5` each."""

    shard_index = luigi.IntParameter(description="Index of the first shard in the store's plan.json.")
    shard_count = luigi.IntParameter(default=1, description="How many consecutive shards of the plan.")

    def output(self) -> list[luigi.LocalTarget]:
        indices = range(self.shard_index, self.shard_index + self.shard_count)
        return [luigi.LocalTarget(str(shard_path(self.store_dir(), index))) for index in indices]

    def run(self) -> None:
        store_dir, dataset = self.store_dir(), self.load()
        plan = ExtractionPlan.load(store_dir)
        if plan is None:
            raise RuntimeError(f"{store_dir}: no extraction plan; run FeatureStore, which plans the shards")
        jobs = [plan.job(index, dataset.images, self.given_boxes(dataset))
                for index in range(self.shard_index, self.shard_index + self.shard_count)
                if not shard_path(store_dir, index).exists()]
        self.report(f"extracting {sum(len(job.images) for job in jobs)} images into {len(jobs)} shard(s)")
        for result in InProcessRunner(self.extractor_config(), self.run_config()).run(jobs):
            self.report(f"shard {result.index}: {result.extracted} extracted, {len(result.failed)} failed")


class FeatureStore(FeatureTask):
    """All shards of a dataset's features plus the manifest: the input of training.

    Its key covers the settings that decide the features, the weights' content and the images'
    content, so a new version of the dataset gets its own store; that store adopts the shards of the
    previous one (hard links) and extracts only new or changed images. It is complete only while its
    store verifies, so a damaged store (a deleted or truncated shard, a lost manifest) is repaired by
    running again: only the images of the missing shards are extracted.
    """

    def settings(self) -> dict[str, Any]:
        return {"extractor": self.extractor_config().feature_settings(), "weights": self.weights_identity(),
                "store": config_settings(self.store_config()), **self.content_digest(self.dataset_images)}

    def weights_identity(self) -> str:
        """The weights by content (sha256), so the same file by another path is the same store."""
        config = self.extractor_config()
        if not config.weights or "://" in config.weights:
            return config.weights_sha256 or config.weights
        return self.hashes().sha256(Path(config.weights).expanduser())

    def dataset_images(self, dataset: Dataset) -> str:
        boxes = [dataset.boxes_file] if dataset.boxes_file is not None else []
        return images_fingerprint(dataset.images, self.hashes(), boxes)

    def complete(self) -> bool:
        if not super().complete():
            return False
        problems = verify_store(self.store_dir(), check_values=False)
        for problem in problems:
            log.warning("%s is incomplete until repaired (re-run to repair it): %s", self.task_id, problem)
        return not problems

    def produce(self, out_dir: Path) -> Iterator[Any]:
        dataset, config = self.load(), self.extractor_config()
        if presets_for(self.dataset).needs_weights:
            require_weights(config, self.dataset)
        store_dir, boxes = out_dir / STORE_SUBDIR, self.given_boxes(dataset)
        plan = ExtractionPlan.load(store_dir) or self.plan(dataset, store_dir, boxes)
        if self.executor == "dask":
            from extractors.distributed import DaskRunner  # imports dask.distributed: slow, so only when asked

            with DaskRunner(config, self.run_config(), config_of(self, DaskConfig)) as runner:
                list(runner.run(plan.jobs(dataset.images, boxes)))
        else:
            indices = [shard.index for shard in plan.shards]
            yield [self.clone(ExtractFeatures, shard_index=indices[start],
                              shard_count=len(indices[start:start + self.shards_per_task]))
                   for start in range(0, len(indices), self.shards_per_task)]
        self.report("writing the manifest")
        plan.commit(prune=True)  # the store lists exactly this version of the dataset
        self.report_failures(store_dir)

    def plan(self, dataset: Dataset, store_dir: Path, boxes: Optional[dict[str, Any]]) -> ExtractionPlan:
        """Decided once and saved, so re-runs, resumed runs and every shard task agree on it."""
        self.report(f"hashing {len(dataset.images)} images to plan the shards")
        siblings = [folder / STORE_SUBDIR for folder in sibling_artifacts(store_dir.parent)]
        return plan_extraction(dataset.images, store_dir, self.extractor_config(), store=self.store_config(),
                               retry_failed=self.run_config().retry_failed, boxes=boxes, hashes=self.hashes(),
                               adopt_from=siblings).save()

    def report_failures(self, store_dir: Path) -> None:
        failures = read_failures(store_dir)
        if failures:
            shown = "".join(f"\n  {image_id}: {reason}" for image_id, reason in failures[:20])
            more = f"\n  ... {len(failures) - 20} more in failures.parquet" if len(failures) > 20 else ""
            log.warning("%s: %d images could not be described and are left out of training and evaluation:%s%s",
                        self.task_id, len(failures), shown, more)
