"""Which paper settings apply to a dataset when the user does not override them.

PAPER_PRESETS (models/config.py) holds the paper's per-dataset settings: model variants such as
`t2i_avg` and one `train` entry. The demo has its own, sized for a 2-core CPU in minutes:
1200 images, a small random-init R18 detector over the given boxes, a small joint space, a
short schedule, and a warm-up on the sum over negatives (hardest negatives alone stall early
on small data, as VSE++ notes). Every value here only applies when the user sets nothing.
"""
from __future__ import annotations

from typing import Any

from models.config import PAPER_PRESETS

DEMO_PRESETS: dict[str, dict[str, Any]] = {
    "t2i_avg": {"cross_attn": "t2i", "agg_func": "Mean", "lambda_softmax": 9.0, "word_dim": 64, "embed_size": 128},
    "i2t_avg": {"cross_attn": "i2t", "agg_func": "Mean", "lambda_softmax": 4.0, "word_dim": 64, "embed_size": 128},
    "train": {"learning_rate": 1e-3, "num_epochs": 12, "lr_update": 9, "batch_size": 64, "warmup_epochs": 3,
              "workers": 0, "log_step": 20},
}
DEMO_DATA = {"train_images": 1000, "val_images": 100, "test_images": 100}
DEMO_EXTRACTOR = {"backbone": "R18-C4-demo", "test_short_side": 128, "test_max_side": 160, "min_boxes": 1, "max_boxes": 4,
                  "batch_size": 16}
DEMO_STORE = {"shard_size": 200, "feature_dtype": "float32"}
FALLBACK_DATASET = "f30k"


def dataset_presets(dataset: str) -> dict[str, dict[str, Any]]:
    """Variants + `train` for a dataset; datasets without paper settings (f8k, custom) use f30k's."""
    if dataset == "demo":
        return DEMO_PRESETS
    return PAPER_PRESETS.get(dataset, PAPER_PRESETS[FALLBACK_DATASET])


def variants(dataset: str) -> list[str]:
    """Model variants of a dataset, the paper's best single model first."""
    return [name for name in dataset_presets(dataset) if name != "train"]


def model_preset(dataset: str, variant: str | None) -> dict[str, Any]:
    known = variants(dataset)
    chosen = variant or known[0]
    if chosen not in known:
        raise ValueError(f"--variant {chosen!r} is not a preset of {dataset}; choose one of {', '.join(known)}")
    return dataset_presets(dataset)[chosen]


def train_preset(dataset: str) -> dict[str, Any]:
    return dataset_presets(dataset)["train"]
