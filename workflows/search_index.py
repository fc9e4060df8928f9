"""BuildSearchIndex: the store's search index for the trained model (models.index), saved beside the store."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import luigi

from models.compat import load_model
from models.index import ensure_index
from models.train import BEST_CHECKPOINT
from pipeline.workspace import write_json_atomic
from workflows.features import FeatureTask
from workflows.training import ModelParams, TrainModel

INDEX_RECORD = "search_index.json"


class BuildSearchIndex(ModelParams, FeatureTask):
    """Encodes the store's images once with `model_best.pth` into `<store>.search/<checkpoint>/`.

    What `python -m models search --checkpoint ... --store ...` then uses; this task's folder records
    where the index is, relative to itself (artifacts hold no machine paths). An index left by an earlier
    run is reused, updated or rebuilt as models.index decides (never used stale).
    """

    index_kind = luigi.ChoiceParameter(choices=("auto", "flat", "ivf"), default="auto",
                                       description="FAISS index: flat (exact) | ivf (IVF-SQ8) | auto "
                                                   "(by gallery size).")

    def requires(self) -> dict[str, Any]:
        return {"model": self.clone(TrainModel)}

    def settings(self) -> dict[str, Any]:
        return {"index_kind": self.index_kind}

    def produce(self, out_dir: Path) -> None:
        trained = self.clone(TrainModel)
        checkpoint = trained.artifact_dir / BEST_CHECKPOINT
        self.report("encoding the store into the search index")
        index, status = ensure_index(load_model(checkpoint).model, trained.store_dir(), checkpoint,
                                     kind=self.index_kind)
        self.report(status, 100)
        write_json_atomic(out_dir / INDEX_RECORD, {"index_dir": os.path.relpath(index.directory, out_dir),
                                                   "images": len(index), "index_kind": index.vectors.kind,
                                                   "head": index.info["head"]})
