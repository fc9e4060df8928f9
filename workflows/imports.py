"""ImportFeatures: a feature store built from published files instead of running the detector."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import luigi

from pipeline.fingerprints import files_fingerprint
from pipeline.store.interop import import_records
from pipeline.store.sources import FeatureSource
from workflows.base import config_settings
from workflows.data import DatasetTask, dataset_captions
from workflows.features import STORE_SUBDIR, ExtractorParams


class ImportFeatures(ExtractorParams, DatasetTask):
    """`--features precomp:DIR | tsv:FILE | npz:DIR` as a store whose image ids are the dataset's.

    precomp: `{split}_ims.npy` rows follow the dataset's split order (SCAN's files follow the
    Karpathy JSON), or the ids in `{split}_ids.txt` when present. tsv/npz carry their image ids.
    `--extractor-max-boxes` bounds the regions kept per image (the store's K).
    """

    features = luigi.Parameter(description="precomp:DIR | tsv:FILE | npz:DIR")

    def settings(self) -> dict[str, Any]:
        """What the import reads: the source files by content (not their path), and the dataset's split order."""
        source = FeatureSource.parse(self.features)
        return {"kind": source.kind, "files": files_fingerprint(source.files(), self.hashes()),
                "max_boxes": self.extractor_config().max_boxes, "store": config_settings(self.store_config()),
                **self.content_digest(dataset_captions)}

    def produce(self, out_dir: Path) -> None:
        source, store = FeatureSource.parse(self.features), self.store_config()
        self.report(f"importing {source.kind} features from {source.path}")
        records = source.records(lambda split: [image.image_id for image in self.load().split(split)])
        import_records(records, out_dir / STORE_SUBDIR, max_boxes=self.extractor_config().max_boxes,
                       feature_dtype=store.feature_dtype, shard_size=store.shard_size, source=source.path.name,
                       extractor={"imported_from": source.kind})
