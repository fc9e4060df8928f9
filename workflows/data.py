"""Dataset tasks: the demo's generation, the dataset's input check, the vocabulary and the captions."""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Callable

import luigi

from pipeline.captions import Vocabulary, caption_tokens, write_captions
from pipeline.config import CaptionConfig, DatasetConfig
from pipeline.datasets import Dataset, check_trainable, dataset_files, load_dataset
from pipeline.demo import DemoConfig, generate_demo
from pipeline.errors import InputError
from pipeline.fingerprints import FileHashCache, captions_fingerprint
from pipeline.presets import presets_for
from pipeline.workspace import write_json_atomic
from workflows.base import ArtifactTask, config_settings, configured_workspace
from workflows.params import config_of, config_parameters

log = logging.getLogger("luigi-interface")
VOCAB_FILE = "vocab.json"
CAPTIONS_FILE = "captions.parquet"
CAPTIONS_SUMMARY = "captions_summary.json"
DEMO_DIR = "demo"


def dataset_captions(dataset: Dataset) -> str:
    """What the caption tasks read of a dataset: ids, splits and captions."""
    return captions_fingerprint(dataset.images)


@config_parameters(DemoConfig, prefix="demo_")
class DemoParams:
    """The demo generator's settings, as `demo_*` parameters on every task downstream of it."""

    def demo_config(self) -> DemoConfig:
        return config_of(self, DemoConfig, presets_for("demo").demo)


@config_parameters(DatasetConfig, exclude=("name",), insignificant=("data_root", "image_dir", "captions_file"))
class DatasetParams(DemoParams):
    """Where a real dataset's files are (DatasetConfig): keys cover what the files hold, not where they are."""


class GenerateDemo(DemoParams, ArtifactTask):
    """Draws the synthetic demo dataset (images, captions, boxes) into `<artifact>/demo/`."""

    def settings(self) -> dict[str, Any]:
        return config_settings(self.demo_config())

    def produce(self, out_dir: Path) -> None:
        self.report("drawing the demo images")
        generate_demo(out_dir / DEMO_DIR, self.demo_config())  # builds aside, then replaces the folder whole


class DatasetInputs(DatasetParams, luigi.ExternalTask):
    """A real dataset's own files (images, captions); the pipeline reads them, never makes them.

    Incomplete when they cannot be read or do not make a trainable dataset (splits, captions per
    image), checked in seconds before any extraction: luigi then reports missing data (exit code 20)
    and the log names the file and the problem.
    """

    dataset = luigi.Parameter()

    def complete(self) -> bool:
        try:
            check_trainable(loaded_dataset(config_of(self, DatasetConfig, {"name": self.dataset})))
        except InputError as error:
            log.error("dataset %s cannot be used: %s", self.dataset, error)
            return False
        return True


def loaded_dataset(config: DatasetConfig) -> Dataset:
    """The dataset, read once per process and version of its captions file and image folder.

    Every task of a run asks for it, several times; a changed file or folder is read again.
    """
    stamp = []
    for path in dataset_files(config):
        try:
            stat = path.stat()
            stamp.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
        except OSError:
            stamp.append(None)  # absent: load_dataset names the missing file
    return _load(config, tuple(stamp))


@functools.lru_cache(maxsize=16)
def _load(config: DatasetConfig, stamp: object) -> Dataset:
    del stamp  # part of the cache key only
    return load_dataset(config)


@functools.lru_cache(maxsize=1)
def file_hashes(workspace: Path) -> FileHashCache:
    """The workspace's cache of file digests (dataset images, weights, imported feature files)."""
    return FileHashCache(workspace / ".cache" / "file-hashes.sqlite")


class DatasetTask(DatasetParams, ArtifactTask):
    """A task reading the dataset: the demo from GenerateDemo's artifact, others from the data root.

    The key of a task covers what it reads of a real dataset (`content_digest`), so editing, fixing or
    growing the dataset reruns exactly the tasks that depend on what changed. The demo is generated:
    GenerateDemo's key already says what it holds.
    """

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
        return loaded_dataset(self.dataset_config())

    def hashes(self) -> FileHashCache:
        return file_hashes(configured_workspace())

    def content_digest(self, read: Callable[[Dataset], str]) -> dict[str, str]:
        """{"content": read(dataset)} for a real dataset; {} for the demo; a placeholder while unreadable.

        Computed once per task instance (luigi keeps one instance per parameter set for the whole run).
        """
        if self.dataset == "demo":
            return {}
        digests = self.__dict__.setdefault("_content_digests", {})
        if read not in digests:
            try:
                digests[read] = read(self.load())
            except InputError:
                return {"content": "unreadable"}  # DatasetInputs is then incomplete and says why
        return {"content": digests[read]}


@config_parameters(CaptionConfig, insignificant=("row_group_size",))
class CaptionParams:
    """How captions become token ids (CaptionConfig)."""

    def caption_config(self) -> CaptionConfig:
        return config_of(self, CaptionConfig)


class BuildVocab(CaptionParams, DatasetTask):
    """SCAN's vocabulary JSON: words seen >= vocab_threshold times in train captions, or a given file."""

    def settings(self) -> dict[str, Any]:
        given = self.caption_config().vocab_file
        vocab = {"vocab_file": self.hashes().sha256(given)} if given is not None else {}
        return {**super().settings(), **vocab, **self.content_digest(dataset_captions)}

    def produce(self, out_dir: Path) -> None:
        config = self.caption_config()
        if config.vocab_file is not None:
            vocab = Vocabulary.from_scan_json(config.vocab_file)
        else:
            dataset = self.load()
            self.report(f"tokenising the train captions of {len(dataset.split('train'))} images")
            vocab = Vocabulary.build([caption_tokens(text, config.max_words) for image in dataset.split("train")
                                      for text in image.captions], threshold=config.vocab_threshold)
        vocab.save_scan_json(out_dir / VOCAB_FILE)


class PrepareCaptions(CaptionParams, DatasetTask):
    """Every caption with its split and token ids, in one Parquet file (pipeline.captions layout)."""

    def requires(self) -> Any:
        return {"dataset": super().requires(), "vocab": self.clone(BuildVocab)}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), **self.content_digest(dataset_captions)}

    def produce(self, out_dir: Path) -> None:
        vocab = Vocabulary.from_scan_json(self.clone(BuildVocab).artifact_dir / VOCAB_FILE)
        self.report("writing captions")
        config, dataset = self.caption_config(), self.load()
        cut = write_captions(dataset, vocab, out_dir / CAPTIONS_FILE, row_group_size=config.row_group_size,
                             max_words=config.max_words)
        write_json_atomic(out_dir / CAPTIONS_SUMMARY, {
            "images": len(dataset.images), "captions": sum(len(image.captions) for image in dataset.images),
            "cut_to_max_words": cut, "max_words": config.max_words,
            "skipped": [{"location": entry.location, "reason": entry.reason} for entry in dataset.skipped]})
        if cut:
            log.warning("%s: %d captions were longer than %d tokens and were cut to that length", self.task_id, cut,
                        config.max_words)
