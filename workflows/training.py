"""TrainModel: SCAN trained on a feature store and the captions, as an external (torchrun) program."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import luigi

from models.config import EvalConfig, HeadConfig, ModelConfig, TrainConfig
from models.train import SUMMARY
from pipeline.presets import presets_for
from pipeline.processes import child_dies_with_parent
from pipeline.store import read_store_info
from pipeline.store.sources import FeatureSource
from pipeline.workspace import write_json_atomic
from workflows.base import config_settings
from workflows.data import VOCAB_FILE, CAPTIONS_FILE, BuildVocab, CaptionParams, PrepareCaptions
from workflows.features import STORE_SUBDIR, FeatureStore, FeatureTask
from workflows.imports import ImportFeatures
from workflows.params import config_of, config_parameters

SPEC_FILE = "train_spec.json"
TRAIN_LOG = "train.log"
TRAIN_INSIGNIFICANT = ("workers", "device", "log_step")


@config_parameters(HeadConfig)
@config_parameters(ModelConfig, exclude=("img_dim",))
@config_parameters(TrainConfig, rename={"workers": "loader_workers"},  # luigi owns --workers (parallel tasks)
                   insignificant=TRAIN_INSIGNIFICANT)
class ModelParams(CaptionParams):
    """Every SCAN hyperparameter (ModelConfig + TrainConfig) plus the feature source and launcher."""

    features = luigi.Parameter(default="extract", description="extract | precomp:DIR | tsv:FILE | npz:DIR")
    variant = luigi.OptionalParameter(default=None, description="Paper preset of the dataset (f30k: t2i_avg | i2t_avg; "
                                                                 "coco: t2i_lse | i2t_avg); default: the first.")
    nproc = luigi.IntParameter(default=1, significant=False,
                               description="Training processes (torch.distributed.run, gloo on CPU, nccl on GPU).")

    def model_config(self, img_dim: int) -> ModelConfig:
        return config_of(self, ModelConfig, {**presets_for(self.dataset).variant(self.variant), "img_dim": img_dim})

    def train_config(self) -> TrainConfig:
        return config_of(self, TrainConfig, presets_for(self.dataset).train)

    def head_config(self) -> HeadConfig:
        return config_of(self, HeadConfig)

    def features_task(self) -> FeatureTask:
        return self.clone(FeatureStore) if FeatureSource.parse(self.features).extracted else self.clone(ImportFeatures)


class TrainModel(ModelParams, FeatureTask):
    """`model_best.pth`, `checkpoint.pth`, `summary.json` and TensorBoard logs of one SCAN model.

    Resumes from its own `checkpoint.pth` when a previous run was interrupted.
    """

    def requires(self) -> dict[str, Any]:
        return {"features": self.features_task(), "captions": self.clone(PrepareCaptions),
                "vocab": self.clone(BuildVocab)}

    def settings(self) -> dict[str, Any]:
        significant = {name: value for name, value in config_settings(self.train_config()).items()
                       if name not in TRAIN_INSIGNIFICANT}
        return {"model": config_settings(self.model_config(img_dim=0)), "train": significant,
                "head": config_settings(self.head_config())}

    def store_dir(self) -> Path:
        return self.features_task().artifact_dir / STORE_SUBDIR

    def produce(self, out_dir: Path) -> None:
        store_dir = self.store_dir()
        relative = {name: os.path.relpath(path, out_dir) for name, path in (
            ("store_dir", store_dir), ("captions", self.clone(PrepareCaptions).artifact_dir / CAPTIONS_FILE),
            ("vocab", self.clone(BuildVocab).artifact_dir / VOCAB_FILE))}
        spec = {"model": dataclasses.asdict(self.model_config(read_store_info(store_dir).feature_dim)),
                "train": dataclasses.asdict(self.train_config()), "eval": dataclasses.asdict(EvalConfig(split="dev")),
                "head": dataclasses.asdict(self.head_config()),
                **relative}
        write_json_atomic(out_dir / SPEC_FILE, spec)
        self.launch(out_dir, spec["train"]["num_epochs"])

    def command(self) -> list[str]:
        """The trainer, run in the artifact folder (paths in the spec are relative to it)."""
        if self.nproc > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                    "-m", "workflows.train_entry", SPEC_FILE]
        return [sys.executable, "-m", "workflows.train_entry", SPEC_FILE]

    def launch(self, out_dir: Path, epochs: int) -> None:
        """Run the trainer (it dies with this process), reporting its epochs (from summary.json) as luigi progress."""
        self.report(f"training {epochs} epochs with {self.nproc} process(es); log: {TRAIN_LOG} of {self.key()}", 0)
        command = self.command()
        with open(out_dir / TRAIN_LOG, "a") as log:
            log.write("$ python " + " ".join(command[1:]) + "\n")
            log.flush()
            process = subprocess.Popen(command, cwd=out_dir, stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=child_dies_with_parent())
            try:
                reported = -1
                while process.poll() is None:
                    time.sleep(1)
                    reported = self.report_epochs(out_dir, epochs, reported)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if process.returncode:
            tail = (out_dir / TRAIN_LOG).read_text().splitlines()[-20:]
            raise RuntimeError(f"training failed (exit {process.returncode}); end of {out_dir / TRAIN_LOG}:\n"
                               + "\n".join(tail))

    def report_epochs(self, out_dir: Path, epochs: int, reported: int) -> int:
        """Report the newest finished epoch (from summary.json) if it is new; return it."""
        summary = out_dir / SUMMARY
        if not summary.exists():
            return reported
        done = json.loads(summary.read_text())
        if done["epochs"] != reported and done["history"]:
            self.report(f"epoch {done['epochs']}/{epochs}, dev rsum {done['history'][-1]['rsum']:.1f}",
                        100.0 * done["epochs"] / max(epochs, 1))
        return done["epochs"]
