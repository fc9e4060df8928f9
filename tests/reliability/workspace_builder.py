"""A small but real workspace, laid out as the Luigi tasks leave it, for the doctor and fault tests.

BuildVocab -> PrepareCaptions -> TrainModel, plus FeatureStore/<key>/store (as Luigi names them),
each finished by a `_COMPLETE.json` marker naming its upstream keys.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.compat import CHECKPOINT_FORMAT
from models.config import ModelConfig
from models.encoders import SCANModel
from pipeline.captions import Vocabulary, write_captions
from pipeline.datasets import Dataset, ImageRecord
from pipeline.store import RegionRecord, ShardWriter, StoreInfo, commit_manifest, init_store

MODEL = ModelConfig(img_dim=8, word_dim=8, embed_size=8)
WORDS = ("a", "dog", "cat", "runs", "sits", ".")
KEYS = {"vocab": "BuildVocab/demo-aaaaaaaaaa", "captions": "PrepareCaptions/demo-bbbbbbbbbb",
        "model": "TrainModel/demo-cccccccccc", "store": "FeatureStore/demo-dddddddddd"}


def _mark(folder: Path, upstream: list[str]) -> None:
    (folder / "_COMPLETE.json").write_text(json.dumps({"key": str(folder), "upstream": upstream}))


def region_record(image_id: str, rng: np.random.Generator, k: int = 3, d: int = 8) -> RegionRecord:
    return RegionRecord(image_id=image_id, features=rng.normal(size=(k, d)).astype(np.float32),
                        boxes=np.tile(np.array([0, 0, 4, 4], np.float32), (k, 1)), object_ids=np.ones(k, np.int64),
                        object_conf=np.full(k, 0.5, np.float32), attr_ids=np.zeros(k, np.int64),
                        attr_conf=np.zeros(k, np.float32), image_hw=(8, 8))


def build_store(store_dir: Path, n_images: int = 4, shard_size: int = 2, seed: int = 0) -> Path:
    init_store(store_dir, StoreInfo(feature_dim=8, max_boxes=4, feature_dtype="float32"))
    rng = np.random.default_rng(seed)
    for index, start in enumerate(range(0, n_images, shard_size)):
        with ShardWriter.for_store(store_dir, index) as writer:
            for number in range(start, min(start + shard_size, n_images)):
                writer.append(region_record(f"img{number}", rng), relpath=f"img{number}.jpg", sha256=f"{number:064x}")
    commit_manifest(store_dir)
    return store_dir


def save_checkpoint(path: Path, vocab_size: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = SCANModel(vocab_size, MODEL)
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": asdict(MODEL),
                "vocab_size": vocab_size}, path)
    return path


def build_workspace(root: Path) -> dict[str, Path]:
    """Every artifact kind the doctor checks, all consistent; returns the folder of each task."""
    folders = {name: root / key for name, key in KEYS.items()}
    for folder in folders.values():
        folder.mkdir(parents=True)
    vocab = Vocabulary(("<pad>", "<start>", "<end>", "<unk>") + WORDS)
    vocab.save_scan_json(folders["vocab"] / "vocab.json")
    images = tuple(ImageRecord(f"img{i}", root / f"img{i}.jpg", f"img{i}.jpg", "train", ("A dog runs.", "a cat sits"))
                   for i in range(4))
    write_captions(Dataset("demo", root, images, root / "captions.json"), vocab,
                   folders["captions"] / "captions.parquet")
    build_store(folders["store"] / "store")
    save_checkpoint(folders["model"] / "model_best.pth", len(vocab))
    _mark(folders["vocab"], [])
    _mark(folders["captions"], [KEYS["vocab"]])
    _mark(folders["store"], [])
    _mark(folders["model"], [KEYS["captions"], KEYS["store"]])
    return folders
