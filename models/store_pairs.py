"""A split of a feature store and its caption Parquet as CaptionPairs (what training and evaluation read).

Evaluation pairs caption j with image j // 5 of the split (the reference protocol), so a split is
served as its own region source, images in caption order, the first 5 captions of each image.
`evaluate_on_store` evaluates trained checkpoints on such a split and writes the results.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.compat import load_model
from models.config import EvalConfig
from models.data import CAPTIONS_PER_IMAGE, CaptionPairs, RegionSource
from models.evaluate import evaluate_models, format_table, save_results
from pipeline.atomic import write_text_atomic
from pipeline.captions import read_captions
from pipeline.devices import resolve_device
from pipeline.errors import InputError
from pipeline.store import StoreReader

RESULTS_FILE = "results.json"
TABLE_FILE = "results.txt"
SPLIT_NAMES = {"testall": "test"}  # COCO's 5K test images are our "test" split


class SplitRegions:
    """The rows of a region source that belong to one split, addressed 0..n-1 (RegionSource protocol)."""

    def __init__(self, regions: RegionSource, positions: Sequence[int]) -> None:
        self.regions = regions
        self.positions = np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def image_ids(self) -> list[str]:
        every = self.regions.image_ids
        return [every[i] for i in self.positions]

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.regions.read(self.positions[np.asarray(indices, dtype=np.int64)])


@dataclass(frozen=True)
class StoreSplit:
    """One split's pairs, and the images left out because the store has no features for them."""

    pairs: CaptionPairs
    without_features: tuple[str, ...]


def split_pairs(store_dir: Path, captions_path: Path, split: str, *, evaluation: bool) -> StoreSplit:
    """CaptionPairs of one split; for evaluation exactly 5 captions per image in image order.

    Images the store could not describe (unreadable files, listed in its failures.parquet) have no
    features: their captions are left out and the images named in `without_features`.
    """
    table = read_captions(captions_path, split).to_pydict()
    if not table["image_id"]:
        raise InputError(captions_path, f"no captions in split {split!r}")
    store = StoreReader(store_dir)
    position = {image_id: i for i, image_id in enumerate(store.image_ids)}
    missing = tuple(dict.fromkeys(image_id for image_id in table["image_id"] if image_id not in position))
    if len(missing) == len(set(table["image_id"])):
        raise InputError(store_dir, f"none of the {len(missing)} images of split {split!r} has features "
                                    f"(e.g. {list(missing[:3])}); is this the store of this dataset?")
    keep = [row for row, image_id in enumerate(table["image_id"]) if image_id in position]
    table = {name: [values[row] for row in keep] for name, values in table.items()}
    order = list(dict.fromkeys(table["image_id"]))
    regions = SplitRegions(store, [position[image_id] for image_id in order])
    local = {image_id: i for i, image_id in enumerate(order)}
    rows = sorted(range(len(table["image_id"])), key=lambda r: (local[table["image_id"][r]], table["caption_index"][r]))
    if evaluation:
        rows = _first_per_image(rows, table["image_id"], captions_path, split)
    pairs = CaptionPairs(regions, [table["token_ids"][r] for r in rows], [local[table["image_id"][r]] for r in rows])
    return StoreSplit(pairs, missing)


def _first_per_image(rows: list[int], image_ids: list[str], source: Path, split: str) -> list[int]:
    kept, seen = [], {}
    for row in rows:
        seen[image_ids[row]] = seen.get(image_ids[row], 0) + 1
        if seen[image_ids[row]] <= CAPTIONS_PER_IMAGE:
            kept.append(row)
    short = [image_id for image_id, count in seen.items() if count < CAPTIONS_PER_IMAGE]
    if short:
        raise InputError(source, f"split {split!r}: {len(short)} images have fewer than {CAPTIONS_PER_IMAGE} captions, "
                                 f"e.g. {short[:3]}; the retrieval protocol needs {CAPTIONS_PER_IMAGE}")
    return kept


def evaluate_on_store(checkpoints: Sequence[Path], store_dir: Path, captions: Path, config: EvalConfig, device: str,
                      out_dir: Path) -> str:
    """One model or an ensemble (averaged similarities) on a split: results.json + ranks and results.txt.

    Returns the recall table.
    """
    resolved = resolve_device(device)
    models = [load_model(path, resolved).model for path in checkpoints]
    split = split_pairs(store_dir, captions, SPLIT_NAMES.get(config.split, config.split), evaluation=True)
    results, ranks = evaluate_models(models, split.pairs, config, resolved)
    results["images_without_features"] = list(split.without_features)
    save_results(results, ranks, out_dir / RESULTS_FILE)
    table = format_table(results)
    write_text_atomic(out_dir / TABLE_FILE, table + "\n")
    return table
