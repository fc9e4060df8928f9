"""Settings of the dataset and caption stages, defined once; Luigi parameters are generated from them."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

DATA_ROOT_ENV = "SCAN_DATA_ROOT"
DATASET_NAMES = ("f30k", "coco", "f8k", "demo", "custom")
MISSING_IMAGE_POLICIES = ("error", "skip", "allow")


def _default_data_root() -> Path:
    """$SCAN_DATA_ROOT when set, else ./data; read at construction so tests and shells can point elsewhere."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data")


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset to read and where its files are (see pipeline.datasets for the layouts)."""

    name: str = field(default="demo", metadata={
        "help": "Dataset from the registry: " + " | ".join(DATASET_NAMES) + ".", "choices": DATASET_NAMES})
    data_root: Path = field(default_factory=_default_data_root, metadata={
        "help": "Folder holding one sub-folder per dataset (<data_root>/f30k/...); "
                f"default ${DATA_ROOT_ENV}, else ./data."})
    image_dir: Optional[Path] = field(default=None, metadata={
        "help": "Image folder, overriding the dataset's default "
                "(<data_root>/<name>/images; custom: <data_root>/custom)."})
    captions_file: Optional[Path] = field(default=None, metadata={
        "help": "Captions/split file (Karpathy .json, .token, captions .csv/.jsonl), "
                "overriding the dataset's default."})
    missing_images: str = field(default="error", metadata={
        "help": "An image file listed but absent: error | skip (drop it, recorded in Dataset.skipped) | "
                "allow (do not check).",
        "choices": MISSING_IMAGE_POLICIES})

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            raise ValueError(f"name={self.name!r}; expected one of {', '.join(DATASET_NAMES)}")
        if self.missing_images not in MISSING_IMAGE_POLICIES:
            raise ValueError(f"missing_images={self.missing_images!r}; "
                             f"expected one of {', '.join(MISSING_IMAGE_POLICIES)}")


@dataclass(frozen=True)
class CaptionConfig:
    """How captions become token ids: the vocabulary and the Parquet layout."""

    vocab_threshold: int = field(default=4, metadata={
        "help": "Keep words seen at least this many times in the train captions (SCAN: 4)."})
    vocab_file: Optional[Path] = field(default=None, metadata={
        "help": "Use this SCAN vocab JSON (e.g. f30k_precomp_vocab.json) "
                "instead of building one from the train split."})
    row_group_size: int = field(default=65536, metadata={
        "help": "Captions per Parquet row group: the unit a reader loads at once."})
    max_words: int = field(default=100, metadata={
        "help": "Cut captions after this many tokens (the reference keeps them whole; no Flickr30K or COCO caption "
                "is longer than 75), so one runaway line cannot blow up a batch; cut captions are counted."})

    def __post_init__(self) -> None:
        if self.vocab_threshold < 1:
            raise ValueError(f"vocab_threshold={self.vocab_threshold}; expected >= 1")
        if self.row_group_size < 1 or self.max_words < 1:
            raise ValueError(f"row_group_size={self.row_group_size}, max_words={self.max_words}; expected >= 1")
