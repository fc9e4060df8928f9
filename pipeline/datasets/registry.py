"""The named datasets: where their files live under the data root and how to read them.

`<data_root>/<name>/` holds the captions/split file (first candidate found wins) and, in
`images/`, the image files. The demo's JSON names its files "images/00000.png" (Karpathy
`filepath` "images"), so its image root is the demo folder itself; custom data keeps the images
and captions.csv/.jsonl side by side.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DatasetConfig
from pipeline.datasets.build import build_records, drop_absent_images
from pipeline.datasets.custom import read_captions_csv, read_captions_jsonl
from pipeline.datasets.karpathy import read_karpathy
from pipeline.datasets.records import Dataset
from pipeline.datasets.sources import RawImage
from pipeline.datasets.tokenfile import read_token_dataset
from pipeline.errors import InputError, MissingDataError

KARPATHY_SPLITS = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"


@dataclass(frozen=True)
class DatasetSpec:
    """One named dataset: candidate caption files (in <data_root>/<name>/), image folder, reading options."""

    name: str
    captions_files: tuple[str, ...]
    hint: str
    image_subdir: str = "images"
    split_lists: tuple[tuple[str, str], ...] = ()
    id_key: str | None = None
    boxes_file: str | None = None
    captions_with_images: bool = False  # captions file looked up in the image folder (after image_dir override)


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("f30k", ("dataset_flickr30k.json", "results_20130124.token"),
                split_lists=(("train", "train.txt"), ("dev", "dev.txt"), ("test", "test.txt")),
                hint=f"Flickr30K: dataset_flickr30k.json is in Karpathy's splits {KARPATHY_SPLITS}; the images "
                     "(flickr30k-images) from https://shannon.cs.illinois.edu/DenotationGraph/ "
                     "go in <data_root>/f30k/images/"),
    DatasetSpec("coco", ("dataset_coco.json",), id_key="cocoid",
                hint=f"MS-COCO: dataset_coco.json is in Karpathy's splits {KARPATHY_SPLITS}; the train2014 and val2014 "
                     "images from https://cocodataset.org/#download "
                     "go in <data_root>/coco/images/{train2014,val2014}/"),
    DatasetSpec("f8k", ("dataset_flickr8k.json", "Flickr8k.token.txt"),
                split_lists=(("train", "Flickr_8k.trainImages.txt"), ("dev", "Flickr_8k.devImages.txt"),
                             ("test", "Flickr_8k.testImages.txt")),
                hint=f"Flickr8k: dataset_flickr8k.json is in Karpathy's splits {KARPATHY_SPLITS} (or use the official "
                     "Flickr8k.token.txt and Flickr_8k.*Images.txt); "
                     "the Flickr8k_Dataset images go in <data_root>/f8k/images/"),
    DatasetSpec("demo", ("dataset_demo.json",), image_subdir="", boxes_file="boxes.json",
                hint="The demo is generated: pipeline.demo.generate_demo(<data_root>/demo, DemoConfig()) "
                     "or `luigi --module workflows GenerateDemo --dataset demo`"),
    DatasetSpec("custom", ("captions.csv", "captions.jsonl"), image_subdir="", captions_with_images=True,
                hint="Custom data: put the images and captions.csv (image,caption[,split]) or captions.jsonl in "
                     "<data_root>/custom/, or set image_dir and captions_file"),
)}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_files(config: DatasetConfig) -> tuple[Path, Path]:
    """(image root, captions file) after the config's overrides; the first existing candidate wins."""
    spec = _spec(config.name)
    folder = Path(config.data_root) / spec.name
    image_root = Path(config.image_dir) if config.image_dir else folder / spec.image_subdir
    if config.captions_file:
        return image_root, Path(config.captions_file)
    captions_folder = image_root if spec.captions_with_images else folder
    candidates = [captions_folder / name for name in spec.captions_files]
    return image_root, next((path for path in candidates if path.is_file()), candidates[0])


def registered_config(name: str, data_root: Path, **overrides: object) -> DatasetConfig:
    """DatasetConfig with image_dir and captions_file resolved to the registry's files under `data_root`."""
    config = DatasetConfig(name=name, data_root=Path(data_root), **overrides)
    image_root, captions_file = dataset_files(config)
    return dataclasses.replace(config, image_dir=image_root, captions_file=captions_file)


def _read(spec: DatasetSpec, captions_file: Path) -> list[RawImage]:
    """Chooses the reader by file name: Karpathy .json, custom .csv/.jsonl, else a Flickr token file."""
    suffix = captions_file.suffix.lower()
    if suffix == ".json":
        return read_karpathy(captions_file, id_key=spec.id_key)
    if suffix == ".csv":
        return read_captions_csv(captions_file)
    if suffix == ".jsonl":
        return read_captions_jsonl(captions_file)
    if not spec.split_lists:
        raise InputError(captions_file, f"a token file needs split lists, which {spec.name!r} does not define; "
                         "use a Karpathy .json or captions .csv/.jsonl")
    split_files = {split: captions_file.parent / name for split, name in spec.split_lists}
    for path in split_files.values():
        if not path.is_file():
            raise MissingDataError(path, f"split list missing (needed with {captions_file.name})", hint=spec.hint)
    return read_token_dataset(captions_file, split_files)


def load_dataset(config: DatasetConfig) -> Dataset:
    """Reads and checks the dataset `config` names; absent files -> MissingDataError with where to get them."""
    spec = _spec(config.name)
    image_root, captions_file = dataset_files(config)
    if not captions_file.is_file():
        raise MissingDataError(captions_file, f"captions file of dataset {spec.name!r} not found", hint=spec.hint)
    if config.missing_images != "allow" and not image_root.is_dir():
        raise MissingDataError(image_root, f"image folder of dataset {spec.name!r} not found", hint=spec.hint)
    records, skipped = build_records(_read(spec, captions_file), source=captions_file, image_root=image_root)
    if not records:
        raise InputError(captions_file, "no image with a caption in it" + (f" ({len(skipped)} entries left out, e.g. "
                                        f"{skipped[0].location}: {skipped[0].reason})" if skipped else ""))
    records, absent = drop_absent_images(records, policy=config.missing_images, source=captions_file,
                                         image_root=image_root, hint=spec.hint)
    boxes = captions_file.parent / spec.boxes_file if spec.boxes_file else None
    return Dataset(spec.name, image_root.resolve(), tuple(records), captions_file,
                   boxes if boxes is not None and boxes.is_file() else None, tuple(skipped + absent))
