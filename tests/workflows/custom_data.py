"""A real dataset on disk, generated: the demo's drawn images and captions laid out as a `custom` dataset.

The workflow then treats it as a user's own data (captions.csv, images beside it, detector weights
file required), which is what the data-change tests need: files to edit, add, break and fix.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.weights import write_published
from pipeline.demo import DemoConfig, generate_demo

SPLITS = {"train": "train", "val": "dev", "test": "test"}


@dataclass(frozen=True)
class SourceImage:
    file: Path
    split: str
    captions: tuple[str, ...]


def drawn_images(folder: Path, train: int = 12, dev: int = 3, test: int = 3) -> list[SourceImage]:
    """Demo images with their 5 captions and split, drawn once into `folder`."""
    generate_demo(folder, DemoConfig(train_images=train, val_images=dev, test_images=test, seed=7))
    document = json.loads((folder / "dataset_demo.json").read_text())
    return [SourceImage(folder / entry["filepath"] / entry["filename"], SPLITS[entry["split"]],
                        tuple(sentence["raw"] for sentence in entry["sentences"])) for entry in document["images"]]


def write_custom(data_root: Path, images: Iterable[SourceImage]) -> Path:
    """`<data_root>/custom/` with the images and captions.csv (image,caption,split); returns the folder."""
    folder = data_root / "custom"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "split"])
        for image in images:
            if not (folder / image.file.name).exists():
                shutil.copy(image.file, folder / image.file.name)
            for caption in image.captions:
                writer.writerow([image.file.name, caption, image.split])
    return folder


EXTRACTOR = ExtractorConfig(backbone="R18-C4-demo", min_boxes=1, max_boxes=4, rpn_pre_nms_topk=100,
                            rpn_post_nms_topk=8, device="cpu")


def detector_weights(path: Path) -> Path:
    """The small demo detector (seeded random init) written as airsplay's published .pkl layout."""
    write_published(build_detector(EXTRACTOR).state_dict(), path, "airsplay", EXTRACTOR.spec)
    return path


def task_params(data_root: Path, weights: Path) -> dict[str, object]:
    """Luigi parameters of the whole chain at test size (seconds per stage on 2 CPU cores)."""
    return {"dataset": "custom", "data_root": str(data_root), "extractor_backbone": EXTRACTOR.backbone,
            "extractor_weights": str(weights), "extractor_min_boxes": EXTRACTOR.min_boxes,
            "extractor_max_boxes": EXTRACTOR.max_boxes, "extractor_rpn_pre_nms_topk": EXTRACTOR.rpn_pre_nms_topk,
            "extractor_rpn_post_nms_topk": EXTRACTOR.rpn_post_nms_topk, "extractor_device": "cpu",
            "shard_size": 4, "feature_dtype": "float32", "num_workers": 0, "torch_threads": 1,
            "vocab_threshold": 1, "num_epochs": 1, "warmup_epochs": 1, "batch_size": 6, "embed_size": 16,
            "word_dim": 16, "loader_workers": 0, "device": "cpu"}
