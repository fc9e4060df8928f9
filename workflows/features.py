"""Region features: extracted shard by shard into a store, or imported from published formats.

`--features extract` (default) runs the detector: FeatureStore plans the shards once (plan.json),
then one ExtractFeatures task per shard writes `shards/shard-NNNNN.h5` into the store directory
(or, with `--executor dask`, all shards run on a Dask cluster). `--features precomp:DIR`,
`tsv:FILE` or `npz:DIR` import SCAN precomp / BUTD TSV / MILVLG npz files instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import luigi

from extractors.config import ExtractorConfig
from extractors.distributed import DaskConfig, DaskRunner
from extractors.extract import (InProcessRunner, RunConfig, ShardJob, extract_dataset, load_boxes_json,
                                store_info_for)
from extractors.loader import ImageFile
from pipeline.errors import InputError
from pipeline.store import (ImageSource, ShardPlan, StoreConfig, commit_manifest, init_store, plan_shards,
                            sha256_file, shard_path)
from workflows.base import config_settings
from workflows.data import DatasetTask
from workflows.params import build_config, config_params
from workflows.presets import DEMO_EXTRACTOR, DEMO_STORE
from workflows.workspace import write_json_atomic

PLAN_FILE = "plan.json"
STORE_SUBDIR = "store"
FEATURE_FORMATS = ("extract", "precomp", "tsv", "npz")
WEIGHTS_HELP = ("pass --extractor-weights PATH|URL: the bottom-up-attention weights, e.g. airsplay's "
                "faster_rcnn_from_caffe_attr.pkl or MILVLG's bua-caffe-frcn-r101-k36.pth (see README, Extractor weights)")


def parse_features(spec: str) -> tuple[str, Path | None]:
    """`extract` | `precomp:PATH` | `tsv:PATH` | `npz:PATH` -> (kind, path)."""
    kind, _, path = spec.partition(":")
    if kind not in FEATURE_FORMATS or (kind == "extract") != (path == ""):
        raise ValueError(f"--features {spec!r}: expected extract, precomp:DIR, tsv:FILE or npz:DIR")
    return kind, (Path(path).expanduser().resolve() if path else None)


class ExtractorParams:
    """Detector, run and store settings as parameters; the demo gets a small random-init preset."""

    locals().update(config_params(ExtractorConfig, prefix="extractor_", insignificant=("batch_size", "device")))
    locals().update(config_params(RunConfig, insignificant=[name for name in RunConfig.__dataclass_fields__]))
    locals().update(config_params(StoreConfig))
    executor = luigi.ChoiceParameter(choices=("luigi", "dask"), default="luigi", significant=False,
                                     description="luigi: one ExtractFeatures task per shard (parallel with --workers); "
                                                 "dask: all shards on a Dask cluster.")
    locals().update(config_params(DaskConfig, prefix="dask_", insignificant=DaskConfig.__dataclass_fields__))

    def extractor_config(self) -> ExtractorConfig:
        return build_config(self, ExtractorConfig, DEMO_EXTRACTOR if self.dataset == "demo" else {}, prefix="extractor_")

    def run_config(self) -> RunConfig:
        return build_config(self, RunConfig)

    def store_config(self) -> StoreConfig:
        return build_config(self, StoreConfig, DEMO_STORE if self.dataset == "demo" else {})


class FeatureTask(ExtractorParams, DatasetTask):
    """Shared by the store and its shards: the store lives in FeatureStore's artifact dir."""

    def store_settings(self) -> dict[str, Any]:
        return {"extractor": config_settings(self.extractor_config()), "store": config_settings(self.store_config())}

    def store_dir(self) -> Path:
        return self.clone(FeatureStore).artifact_dir / STORE_SUBDIR

    def given_boxes(self, dataset: Any) -> Optional[dict[str, Any]]:
        """Ground-truth boxes when the dataset ships them (the demo): regions are those boxes."""
        return None if dataset.boxes_file is None else load_boxes_json(dataset.boxes_file)

    def check_weights(self) -> None:
        config = self.extractor_config()
        if self.dataset != "demo" and not config.weights:
            raise InputError(f"--extractor-weights for {self.dataset}", WEIGHTS_HELP)
        if config.weights and "://" not in config.weights and not Path(config.weights).is_file():
            raise InputError(config.weights, f"extractor weights file is missing; {WEIGHTS_HELP}")


class ExtractFeatures(FeatureTask):
    """One shard of the plan: its images through the detector into `store/shards/shard-NNNNN.h5`."""

    shard_index = luigi.IntParameter(description="Index of the shard in the store's plan.json.")

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(shard_path(self.store_dir(), self.shard_index)))

    def run(self) -> None:
        store_dir, dataset = self.store_dir(), self.load()
        sources = tuple(ImageSource(*row) for row in json.loads((store_dir / PLAN_FILE).read_text())[str(self.shard_index)])
        records = {image.image_id: image for image in dataset.images}
        files = tuple(ImageFile(source.image_id, records[source.image_id].path, source.relpath) for source in sources)
        boxes = self.given_boxes(dataset)
        job = ShardJob(store_dir, ShardPlan(self.shard_index, shard_path(store_dir, self.shard_index), sources), files,
                       None if boxes is None else {source.image_id: boxes[source.image_id] for source in sources})
        self.report(f"extracting {len(files)} images into shard {self.shard_index}")
        for result in InProcessRunner(self.extractor_config(), self.run_config()).run([job]):
            self.report(f"shard {result.index}: {result.extracted} extracted, {len(result.failed)} failed", 100)


class FeatureStore(FeatureTask):
    """All shards of a dataset's features plus the manifest: the input of training."""


    def settings(self) -> dict[str, Any]:
        return self.store_settings()

    def produce(self, out_dir: Path) -> Iterator[Any]:
        self.check_weights()
        store_dir, dataset = out_dir / STORE_SUBDIR, self.load()
        boxes = self.given_boxes(dataset)
        boxes_sha = sha256_file(dataset.boxes_file) if boxes is not None else ""
        info = store_info_for(self.extractor_config(), self.store_config().feature_dtype, boxes_sha)
        if self.executor == "dask":
            dask_config = build_config(self, DaskConfig, prefix="dask_")
            with DaskRunner(self.extractor_config(), self.run_config(), dask_config) as runner:
                print(extract_dataset(dataset.images, store_dir, self.extractor_config(), store=self.store_config(),
                                      run=self.run_config(), boxes=boxes, boxes_sha256=boxes_sha, runner=runner))
            return
        init_store(store_dir, info)
        plan = self.plan(dataset, store_dir)
        yield [self.clone(ExtractFeatures, shard_index=int(index)) for index in plan]
        self.report("writing the manifest")
        commit_manifest(store_dir, [image.image_id for image in dataset.images])

    def plan(self, dataset: Any, store_dir: Path) -> dict[str, list[list[str]]]:
        """Shard index -> images, decided once and kept, so re-runs and resumed runs agree on it."""
        path = store_dir / PLAN_FILE
        if path.exists():
            return json.loads(path.read_text())
        self.report(f"hashing {len(dataset.images)} images to plan the shards")
        images = [(image.image_id, image.relpath, sha256_file(image.path)) for image in dataset.images]
        plan = {str(shard.index): [list(source) for source in shard.images]
                for shard in plan_shards(images, store_dir, self.store_config().shard_size)}
        write_json_atomic(path, plan)
        return plan
