"""EvaluateSCAN and EnsembleSCAN: recall tables of trained models on a split (COCO: 5-fold 1K or 5K)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import luigi

from models.config import EVAL_MODES, EvalConfig
from models.store_pairs import evaluate_on_store
from models.train import BEST_CHECKPOINT
from pipeline.presets import presets_for
from workflows.base import config_settings
from workflows.data import CAPTIONS_FILE, PrepareCaptions
from workflows.features import FeatureTask
from workflows.params import config_of, config_parameters
from workflows.training import ModelParams, TrainModel


@config_parameters(EvalConfig, prefix="eval_", insignificant=("score_memory_mb", "fused_scores", "batch_size"),
                   exclude=("reference_dev",))  # store splits are scored whole
class EvalParams:
    """How the trained model is evaluated (EvalConfig) as `eval_*` parameters; by default in every mode
    (SCAN, the global head alone, two-stage), so one table compares them."""

    def eval_config(self) -> EvalConfig:
        return config_of(self, EvalConfig, {"modes": EVAL_MODES})


class EvaluateSCAN(EvalParams, ModelParams, FeatureTask):
    """`results.json` (+ ranks) and `results.txt` of the trained model on the evaluation split."""

    def requires(self) -> dict[str, Any]:
        return {"model": self.clone(TrainModel), "captions": self.clone(PrepareCaptions)}

    def settings(self) -> dict[str, Any]:
        config = config_settings(self.eval_config())
        return {"split": config["split"], "fold5": config["fold5"], "modes": list(config["modes"]),
                "shortlist_fraction": config["shortlist_fraction"]}

    def produce(self, out_dir: Path) -> None:
        model = self.clone(TrainModel)
        self.report(f"evaluating on {self.eval_config().split}")
        evaluate_on_store([model.artifact_dir / BEST_CHECKPOINT], model.store_dir(),
                          self.clone(PrepareCaptions).artifact_dir / CAPTIONS_FILE, self.eval_config(),
                          self.device or "auto", out_dir)


class EnsembleSCAN(EvaluateSCAN):
    """The paper's ensemble: one model per preset variant (e.g. t2i AVG + i2t AVG), similarities averaged."""

    ensemble = luigi.TupleParameter(default=(),
                                    description="Variants to ensemble; default: all presets of the dataset.")

    def members(self) -> list[TrainModel]:
        return [self.clone(TrainModel, variant=name) for name in (self.ensemble or presets_for(self.dataset).variants)]

    def requires(self) -> dict[str, Any]:
        return {"models": self.members(), "captions": self.clone(PrepareCaptions)}

    def produce(self, out_dir: Path) -> None:
        members = self.members()
        self.report(f"evaluating an ensemble of {len(members)} models")
        evaluate_on_store([member.artifact_dir / BEST_CHECKPOINT for member in members], members[0].store_dir(),
                          self.clone(PrepareCaptions).artifact_dir / CAPTIONS_FILE, self.eval_config(),
                          self.device or "auto", out_dir)
