"""Region features: extracted shard by shard into a store, or imported from published formats.

`--features extract` (default) runs the detector through the library's extraction plan
(`extractors.plan`): FeatureStore plans the run once (saved as the store's plan.json), then one
ExtractFeatures task per shard writes `shards/shard-NNNNN.h5` (or, with `--executor dask`, all shards
run on a Dask cluster), and FeatureStore commits the manifest. `--features precomp:DIR`, `tsv:FILE` or
`npz:DIR` import SCAN precomp / BUTD TSV / MILVLG npz files instead (workflows.imports).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import luigi

from extractors.config import ExtractorConfig
from extractors.extract import DaskConfig, InProcessRunner, RunConfig, load_boxes_json
from extractors.plan import ExtractionPlan, plan_extraction
from extractors.weights import require_weights
from pipeline.datasets import Dataset
from pipeline.presets import presets_for
from pipeline.store import StoreConfig, sha256_file, shard_path
from workflows.base import config_settings
from workflows.data import DatasetTask
from workflows.params import config_of, config_parameters

STORE_SUBDIR = "store"


@config_parameters(ExtractorConfig, prefix="extractor_", insignificant=("batch_size", "device"))
@config_parameters(RunConfig, insignificant=RunConfig.__dataclass_fields__)
@config_parameters(StoreConfig)
@config_parameters(DaskConfig, prefix="dask_", insignificant=DaskConfig.__dataclass_fields__)
class ExtractorParams:
    """Detector, run and store settings as parameters; the dataset's presets fill in what is not set."""

    executor = luigi.ChoiceParameter(choices=("luigi", "dask"), default="luigi", significant=False,
                                     description="luigi: one ExtractFeatures task per shard (parallel with --workers); "
                                                 "dask: all shards on a Dask cluster.")

    def extractor_config(self) -> ExtractorConfig:
        return config_of(self, ExtractorConfig, presets_for(self.dataset).extractor)

    def run_config(self) -> RunConfig:
        return config_of(self, RunConfig)

    def store_config(self) -> StoreConfig:
        return config_of(self, StoreConfig, presets_for(self.dataset).store)


class FeatureTask(ExtractorParams, DatasetTask):
    """Shared by the store and its shards: the store lives in FeatureStore's artifact dir."""

    def store_settings(self) -> dict[str, Any]:
        return {"extractor": config_settings(self.extractor_config()), "store": config_settings(self.store_config())}

    def store_dir(self) -> Path:
        return self.clone(FeatureStore).artifact_dir / STORE_SUBDIR

    def given_boxes(self, dataset: Dataset) -> Optional[dict[str, Any]]:
        """Ground-truth boxes when the dataset ships them (the demo): regions are those boxes."""
        return None if dataset.boxes_file is None else load_boxes_json(dataset.boxes_file)


class ExtractFeatures(FeatureTask):
    """One shard of the store's plan: its images through the detector into `store/shards/shard-NNNNN.h5`."""

    shard_index = luigi.IntParameter(description="Index of the shard in the store's plan.json.")

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(shard_path(self.store_dir(), self.shard_index)))

    def run(self) -> None:
        store_dir, dataset = self.store_dir(), self.load()
        plan = ExtractionPlan.load(store_dir)
        if plan is None:
            raise RuntimeError(f"{store_dir}: no extraction plan; run FeatureStore, which plans the shards")
        job = plan.job(self.shard_index, dataset.images, self.given_boxes(dataset))
        self.report(f"extracting {len(job.images)} images into shard {self.shard_index}")
        for result in InProcessRunner(self.extractor_config(), self.run_config()).run([job]):
            self.report(f"shard {result.index}: {result.extracted} extracted, {len(result.failed)} failed", 100)


class FeatureStore(FeatureTask):
    """All shards of a dataset's features plus the manifest: the input of training."""

    def settings(self) -> dict[str, Any]:
        return self.store_settings()

    def produce(self, out_dir: Path) -> Iterator[Any]:
        dataset, config = self.load(), self.extractor_config()
        if presets_for(self.dataset).needs_weights:
            require_weights(config, self.dataset)
        store_dir, boxes = out_dir / STORE_SUBDIR, self.given_boxes(dataset)
        plan = ExtractionPlan.load(store_dir) or self.plan(dataset, store_dir, boxes)
        if self.executor == "dask":
            from extractors.distributed import DaskRunner  # imports dask.distributed: slow, so only when asked

            with DaskRunner(config, self.run_config(), config_of(self, DaskConfig)) as runner:
                results = list(runner.run(plan.jobs(dataset.images, boxes)))
            self.report(f"{sum(result.extracted for result in results)} extracted, "
                        f"{sum(len(result.failed) for result in results)} failed on Dask")
        else:
            yield [self.clone(ExtractFeatures, shard_index=shard.index) for shard in plan.shards]
        self.report("writing the manifest")
        plan.commit()

    def plan(self, dataset: Dataset, store_dir: Path, boxes: Optional[dict[str, Any]]) -> ExtractionPlan:
        """Decided once and saved, so re-runs, resumed runs and every shard task agree on it."""
        self.report(f"hashing {len(dataset.images)} images to plan the shards")
        boxes_sha = sha256_file(dataset.boxes_file) if boxes is not None else ""
        return plan_extraction(dataset.images, store_dir, self.extractor_config(), store=self.store_config(),
                               retry_failed=self.run_config().retry_failed, boxes=boxes, boxes_sha256=boxes_sha).save()
