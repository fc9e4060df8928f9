"""ImportFeatures: a feature store built from published files instead of running the detector."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import luigi

from pipeline.errors import InputError
from pipeline.store.interop import import_records, read_butd_tsv, read_milvlg_npz, read_scan_precomp
from workflows.base import config_settings
from workflows.data import DatasetTask
from workflows.features import STORE_SUBDIR, ExtractorParams, parse_features

SPLITS = ("train", "dev", "test")


class ImportFeatures(ExtractorParams, DatasetTask):
    """`--features precomp:DIR | tsv:FILE | npz:DIR` as a store whose image ids are the dataset's.

    precomp: `{split}_ims.npy` rows follow the dataset's split order (SCAN's files follow the
    Karpathy JSON), or the ids in `{split}_ids.txt` when present. tsv/npz carry their image ids.
    `--extractor-max-boxes` bounds the regions kept per image (the store's K).
    """

    features = luigi.Parameter(description="precomp:DIR | tsv:FILE | npz:DIR")

    def settings(self) -> dict[str, Any]:
        kind, path = parse_features(self.features)
        return {"kind": kind, "path": str(path), "max_boxes": self.extractor_config().max_boxes,
                "store": config_settings(self.store_config())}

    def produce(self, out_dir: Path) -> None:
        kind, path = parse_features(self.features)
        if not path.exists():
            raise InputError(path, f"--features {kind}: no such {'file' if kind == 'tsv' else 'directory'}")
        store = self.store_config()
        self.report(f"importing {kind} features from {path}")
        import_records(self.records(kind, path), out_dir / STORE_SUBDIR, max_boxes=self.extractor_config().max_boxes,
                       feature_dtype=store.feature_dtype, shard_size=store.shard_size, source=path.name,
                       extractor={"imported_from": kind})

    def records(self, kind: str, path: Path) -> Iterator[Any]:
        if kind == "tsv":
            return read_butd_tsv(path)
        if kind == "npz":
            return (read_milvlg_npz(file) for file in sorted(path.glob("*.npz")))
        return self.precomp_records(path)

    def precomp_records(self, folder: Path) -> Iterator[Any]:
        dataset = self.load()
        for split in SPLITS:
            ims = folder / f"{split}_ims.npy"
            if not ims.exists():
                continue
            ids_file = folder / f"{split}_ids.txt"
            ids = (ids_file.read_text().split() if ids_file.exists()
                   else [image.image_id for image in dataset.split(split)])
            yield from read_scan_precomp(ims, ids)
