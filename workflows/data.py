"""Dataset tasks: the demo's generation, the dataset's input check, the vocabulary and the captions."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import luigi

from pipeline.captions import Vocabulary, tokenize, write_captions
from pipeline.config import CaptionConfig, DatasetConfig
from pipeline.datasets import Dataset, load_dataset
from pipeline.demo import DemoConfig, generate_demo
from pipeline.errors import InputError
from pipeline.presets import presets_for
from workflows.base import ArtifactTask, config_settings
from workflows.params import config_of, config_parameters

log = logging.getLogger("luigi-interface")
VOCAB_FILE = "vocab.json"
CAPTIONS_FILE = "captions.parquet"
DEMO_DIR = "demo"


@config_parameters(DemoConfig, prefix="demo_")
class DemoParams:
    """The demo generator's settings, as `demo_*` parameters on every task downstream of it."""

    def demo_config(self) -> DemoConfig:
        return config_of(self, DemoConfig, presets_for("demo").demo)


@config_parameters(DatasetConfig, exclude=("name",), insignificant=("data_root",))
class DatasetParams(DemoParams):
    """Where a real dataset's files are (DatasetConfig); the folder itself is not part of any hash."""


class GenerateDemo(DemoParams, ArtifactTask):
    """Draws the synthetic demo dataset (images, captions, boxes) into `<artifact>/demo/`."""

    def settings(self) -> dict[str, Any]:
        return config_settings(self.demo_config())

    def produce(self, out_dir: Path) -> None:
        self.report("drawing the demo images")
        generate_demo(out_dir / DEMO_DIR, self.demo_config())  # builds aside, then replaces the folder whole


class DatasetInputs(DatasetParams, luigi.ExternalTask):
    """A real dataset's own files (images, captions); the pipeline reads them, never makes them.

    Incomplete when they cannot be read: luigi then reports missing data (exit code 20) and the
    log names the missing file and where to get it.
    """

    dataset = luigi.Parameter()

    def complete(self) -> bool:
        config = config_of(self, DatasetConfig, {"name": self.dataset})
        try:
            load_dataset(config)
        except InputError as error:
            log.error("dataset %s cannot be read: %s", self.dataset, error)
            return False
        return True


class DatasetTask(DatasetParams, ArtifactTask):
    """A task reading the dataset: the demo from GenerateDemo's artifact, others from the data root."""

    def requires(self) -> Any:
        if self.dataset == "demo":
            return self.clone(GenerateDemo)
        return self.clone(DatasetInputs)

    def dataset_config(self) -> DatasetConfig:
        fixed: dict[str, Any] = {"name": self.dataset}
        if self.dataset == "demo":
            fixed["data_root"] = self.clone(GenerateDemo).artifact_dir
        return dataclasses.replace(config_of(self, DatasetConfig), **fixed)

    def load(self) -> Dataset:
        return load_dataset(self.dataset_config())


@config_parameters(CaptionConfig, insignificant=("row_group_size",))
class CaptionParams:
    """How captions become token ids (CaptionConfig)."""

    def caption_config(self) -> CaptionConfig:
        return config_of(self, CaptionConfig)


class BuildVocab(CaptionParams, DatasetTask):
    """SCAN's vocabulary JSON: words seen >= vocab_threshold times in train captions, or a given file."""

    def produce(self, out_dir: Path) -> None:
        config = self.caption_config()
        if config.vocab_file is not None:
            vocab = Vocabulary.from_scan_json(config.vocab_file)
        else:
            dataset = self.load()
            self.report(f"tokenising the train captions of {len(dataset.split('train'))} images")
            vocab = Vocabulary.build([tokenize(text) for image in dataset.split("train") for text in image.captions],
                                     threshold=config.vocab_threshold)
        vocab.save_scan_json(out_dir / VOCAB_FILE)


class PrepareCaptions(CaptionParams, DatasetTask):
    """Every caption with its split and token ids, in one Parquet file (pipeline.captions layout)."""

    def requires(self) -> Any:
        return {"dataset": super().requires(), "vocab": self.clone(BuildVocab)}

    def produce(self, out_dir: Path) -> None:
        vocab = Vocabulary.from_scan_json(self.clone(BuildVocab).artifact_dir / VOCAB_FILE)
        self.report("writing captions")
        write_captions(self.load(), vocab, out_dir / CAPTIONS_FILE, row_group_size=self.caption_config().row_group_size)
