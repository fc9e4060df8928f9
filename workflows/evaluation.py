"""EvaluateSCAN and EnsembleSCAN: recall tables of trained models on a split (COCO: 5-fold 1K or 5K)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import luigi
import torch

from models.compat import load_model
from models.config import EvalConfig
from models.evaluate import evaluate_models, format_table, save_results
from models.train import BEST_CHECKPOINT
from workflows.base import config_settings
from workflows.data import CAPTIONS_FILE, PrepareCaptions
from workflows.params import build_config, config_params
from workflows.presets import variants
from workflows.training import ModelParams, TrainModel
from workflows.features import FeatureTask
from models.store_pairs import split_pairs

RESULTS_FILE = "results.json"
TABLE_FILE = "results.txt"
SPLIT_NAMES = {"testall": "test"}  # COCO's 5K test images are our "test" split


class EvalParams:
    locals().update(config_params(EvalConfig, prefix="eval_", choices={"split": ("dev", "test", "testall")},
                                  insignificant=("score_memory_mb", "fused_scores", "batch_size"),
                                  exclude=("reference_dev",)))  # store splits are scored whole

    def eval_config(self) -> EvalConfig:
        return build_config(self, EvalConfig, prefix="eval_")


def evaluate(checkpoints: list[Path], store_dir: Path, captions: Path, config: EvalConfig, device: str,
             out_dir: Path) -> str:
    """Evaluate one model or an ensemble (averaged similarities); write results + ranks; return the table."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    models = [load_model(path, device).model for path in checkpoints]
    pairs = split_pairs(store_dir, captions, SPLIT_NAMES.get(config.split, config.split), evaluation=True)
    results, ranks = evaluate_models(models, pairs, config, torch.device(device))
    save_results(results, ranks, out_dir / RESULTS_FILE)
    table = format_table(results)
    (out_dir / TABLE_FILE).write_text(table + "\n")
    return table


class EvaluateSCAN(EvalParams, ModelParams, FeatureTask):
    """`results.json` (+ ranks) and `results.txt` of the trained model on the evaluation split."""

    def requires(self) -> dict[str, Any]:
        return {"model": self.clone(TrainModel), "captions": self.clone(PrepareCaptions)}

    def settings(self) -> dict[str, Any]:
        config = config_settings(self.eval_config())
        return {"split": config["split"], "fold5": config["fold5"]}

    def produce(self, out_dir: Path) -> None:
        model = self.clone(TrainModel)
        self.report(f"evaluating on {self.eval_config().split}")
        evaluate([model.artifact_dir / BEST_CHECKPOINT], model.store_dir(),
                 self.clone(PrepareCaptions).artifact_dir / CAPTIONS_FILE, self.eval_config(), self.device or "auto", out_dir)


class EnsembleSCAN(EvaluateSCAN):
    """The paper's ensemble: one model per preset variant (e.g. t2i AVG + i2t AVG), similarities averaged."""

    ensemble = luigi.TupleParameter(default=(), description="Variants to ensemble; default: all presets of the dataset.")

    def members(self) -> list[TrainModel]:
        return [self.clone(TrainModel, variant=name) for name in (self.ensemble or variants(self.dataset))]

    def requires(self) -> dict[str, Any]:
        return {"models": self.members(), "captions": self.clone(PrepareCaptions)}

    def produce(self, out_dir: Path) -> None:
        members = self.members()
        self.report(f"evaluating an ensemble of {len(members)} models")
        evaluate([member.artifact_dir / BEST_CHECKPOINT for member in members], members[0].store_dir(),
                 self.clone(PrepareCaptions).artifact_dir / CAPTIONS_FILE, self.eval_config(), self.device or "auto", out_dir)
