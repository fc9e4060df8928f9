"""Per-dataset defaults of every stage, in one registry read by the Luigi tasks and the command lines.

A preset only fills in what the user did not set (flag or luigi.cfg), and the config dataclass's
own default applies last; values are keyed by the field names of each stage's dataclass
(`ModelConfig`, `TrainConfig`, `ExtractorConfig`, `StoreConfig`, `DemoConfig`), checked by the tests.

The paper's settings (Lee et al. 2018, and kuanghuei/SCAN's README commands) are the presets of f30k
and coco; datasets the paper does not cover (f8k, custom) take f30k's. The demo has its own, sized
for a 2-core CPU in minutes: 1200 images, a small random-init R18 detector over the given boxes, a
small joint space, a short schedule, and a warm-up on the sum over negatives (hardest negatives alone
stall early on small data, as VSE++ notes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

Values = Mapping[str, Any]


@dataclass(frozen=True)
class DatasetPresets:
    """The defaults one dataset brings to each stage."""

    variants: Mapping[str, Values]  # named ModelConfig presets, the paper's best single model first
    train: Values                   # TrainConfig
    extractor: Values = field(default_factory=dict)  # ExtractorConfig
    store: Values = field(default_factory=dict)      # StoreConfig
    demo: Values = field(default_factory=dict)       # DemoConfig
    needs_weights: bool = True  # real images need the published detector; only the demo extracts with random init

    def variant(self, name: str | None) -> Values:
        """The ModelConfig values of variant `name` (None: the first, the paper's best single model)."""
        chosen = name or next(iter(self.variants))
        if chosen not in self.variants:
            raise ValueError(f"variant {chosen!r} is not a preset of this dataset; "
                             f"choose one of {', '.join(self.variants)}")
        return self.variants[chosen]


PAPER_F30K = DatasetPresets(
    variants={"t2i_avg": {"cross_attn": "t2i", "agg_func": "Mean", "lambda_softmax": 9.0},
              "i2t_avg": {"cross_attn": "i2t", "agg_func": "Mean", "lambda_softmax": 4.0}},
    train={"learning_rate": 2e-4, "num_epochs": 30, "lr_update": 15},
)
PAPER_COCO = DatasetPresets(
    variants={"t2i_lse": {"cross_attn": "t2i", "agg_func": "LogSumExp", "lambda_softmax": 9.0, "lambda_lse": 6.0},
              "i2t_avg": {"cross_attn": "i2t", "agg_func": "Mean", "lambda_softmax": 4.0}},
    train={"learning_rate": 5e-4, "num_epochs": 20, "lr_update": 10},
)
DEMO = DatasetPresets(
    variants={"t2i_avg": {"cross_attn": "t2i", "agg_func": "Mean", "lambda_softmax": 9.0,
                          "word_dim": 64, "embed_size": 128},
              "i2t_avg": {"cross_attn": "i2t", "agg_func": "Mean", "lambda_softmax": 4.0,
                          "word_dim": 64, "embed_size": 128}},
    train={"learning_rate": 1e-3, "num_epochs": 12, "lr_update": 9, "batch_size": 64, "warmup_epochs": 3,
           "workers": 0, "log_step": 20},
    extractor={"backbone": "R18-C4-demo", "min_boxes": 1, "max_boxes": 4, "batch_size": 16},
    store={"shard_size": 200, "feature_dtype": "float32"},
    demo={"train_images": 1000, "val_images": 100, "test_images": 100},
    needs_weights=False,
)
DATASET_PRESETS: dict[str, DatasetPresets] = {"f30k": PAPER_F30K, "coco": PAPER_COCO, "demo": DEMO}
FALLBACK = PAPER_F30K


def presets_for(dataset: str | None) -> DatasetPresets:
    """The presets of a dataset; datasets without their own (f8k, custom) and plain image folders take f30k's."""
    return DATASET_PRESETS.get(dataset or "", FALLBACK)
