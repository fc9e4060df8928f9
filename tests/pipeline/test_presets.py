"""Every preset value names a field of its stage's config, and builds a valid config."""
from __future__ import annotations

import pytest

from extractors.config import ExtractorConfig
from models.config import ModelConfig, TrainConfig
from pipeline.config import DATASET_NAMES
from pipeline.config_flags import build_config
from pipeline.demo import DemoConfig
from pipeline.presets import DATASET_PRESETS, FALLBACK, presets_for
from pipeline.store import StoreConfig


@pytest.mark.parametrize("name", sorted(DATASET_PRESETS))
def test_presets_build_valid_configs(name: str) -> None:
    presets = DATASET_PRESETS[name]
    for variant in presets.variants.values():
        build_config(ModelConfig, variant, {})
    for config_cls, values in ((TrainConfig, presets.train), (ExtractorConfig, presets.extractor),
                               (StoreConfig, presets.store), (DemoConfig, presets.demo)):
        build_config(config_cls, values, {})


def test_datasets_without_paper_settings_take_flickr30k_presets() -> None:
    assert presets_for("f8k") is FALLBACK and presets_for("custom") is FALLBACK and presets_for(None) is FALLBACK
    assert set(DATASET_PRESETS) <= set(DATASET_NAMES)
    assert presets_for("coco").variant(None) == presets_for("coco").variants["t2i_lse"]
    with pytest.raises(ValueError, match="not a preset"):
        presets_for("f30k").variant("t2i_lse")


def test_user_values_win_over_presets_and_unknown_preset_fields_are_refused() -> None:
    assert build_config(TrainConfig, {"learning_rate": 1e-3, "num_epochs": 3}, {"num_epochs": 5}) == TrainConfig(
        learning_rate=1e-3, num_epochs=5)
    with pytest.raises(ValueError, match="not fields of TrainConfig"):
        build_config(TrainConfig, {"learning_rat": 1e-3}, {})
