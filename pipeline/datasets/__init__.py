"""Named image-caption datasets (f30k, coco, f8k, demo, custom): read, checked, split as SCAN uses them."""
from pipeline.datasets.checks import check_trainable
from pipeline.datasets.custom import hashed_split
from pipeline.datasets.records import SPLITS, Dataset, ImageRecord, Skipped
from pipeline.datasets.registry import DATASETS, DatasetSpec, dataset_files, load_dataset, registered_config

__all__ = ["DATASETS", "SPLITS", "Dataset", "DatasetSpec", "ImageRecord", "Skipped", "check_trainable", "dataset_files",
           "hashed_split", "load_dataset", "registered_config"]
