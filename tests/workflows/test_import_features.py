"""ImportFeatures from each published format (SCAN precomp, BUTD TSV, MILVLG npz) feeding TrainSCAN."""
from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import luigi
import numpy as np
import pytest

from pipeline.store import StoreReader
from tests.workflows.conftest import TINY_DEMO, params_of
from workflows import ImportFeatures, PrepareCaptions, TrainSCAN
from models.store_pairs import RESULTS_FILE
from workflows.evaluation import EvaluateSCAN
from workflows.features import STORE_SUBDIR

pytestmark = pytest.mark.slow
K, D = 3, 16
TINY_IMPORT = {**{name: value for name, value in TINY_DEMO.items() if not name.startswith("extractor_")},
               "num_epochs": 1, "warmup_epochs": 0}


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def write_precomp(folder: Path, splits: dict[str, list[str]], features: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    for split, ids in splits.items():
        np.save(folder / f"{split}_ims.npy", np.stack([features[image_id] for image_id in ids]))
    return folder


def write_tsv(folder: Path, splits: dict[str, list[str]], features: dict[str, np.ndarray]) -> Path:
    """Caffe generate_tsv.py columns: image_id, image_w, image_h, num_boxes, boxes, features."""
    folder.mkdir()
    path = folder / "features.tsv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        for image_id, array in features.items():
            boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (K, 1))
            writer.writerow([image_id, 64, 64, K, _b64(boxes), _b64(array)])
    return path


def write_npz(folder: Path, splits: dict[str, list[str]], features: dict[str, np.ndarray]) -> Path:
    """MILVLG save_roi_features: x, bbox, num_bbox, image_h, image_w, info (a dict)."""
    folder.mkdir()
    for image_id, array in features.items():
        info = {"image_id": image_id, "objects_id": np.zeros(K, np.int64), "objects_conf": np.ones(K, np.float32),
                "attrs_id": np.zeros(K, np.int64), "attrs_conf": np.ones(K, np.float32)}
        np.savez_compressed(folder / f"{image_id}.npz", x=array, bbox=np.tile(np.float32([0, 0, 10, 10]), (K, 1)),
                            num_bbox=K, image_h=64, image_w=64, info=info)
    return folder


@pytest.mark.parametrize("kind,writer", [("precomp", write_precomp), ("tsv", write_tsv), ("npz", write_npz)])
def test_imported_features_train_and_evaluate(kind: str, writer, tmp_path: Path, workspace: Path) -> None:
    captions = PrepareCaptions(**params_of(PrepareCaptions, TINY_IMPORT))
    assert luigi.build([captions], local_scheduler=True)
    dataset = captions.load()
    splits = {split: [image.image_id for image in dataset.split(split)] for split in ("train", "dev", "test")}
    rng = np.random.default_rng(0)
    features = {image.image_id: rng.standard_normal((K, D)).astype(np.float32) for image in dataset.images}
    source = writer(tmp_path / kind, splits, features)

    params = {**TINY_IMPORT, "features": f"{kind}:{source}"}
    assert luigi.build([TrainSCAN(**params)], local_scheduler=True)
    store = StoreReader(ImportFeatures(**params_of(ImportFeatures, params)).artifact_dir / STORE_SUBDIR)
    assert sorted(store.image_ids) == sorted(features)
    for image_id in list(features)[:5]:
        record = store.get(image_id)
        np.testing.assert_allclose(record.features[:K], features[image_id], rtol=1e-3, atol=1e-3)
    results = json.loads((EvaluateSCAN(**params_of(EvaluateSCAN, params)).artifact_dir / RESULTS_FILE).read_text())
    assert set(results) >= {"i2t", "t2i", "rsum"}
