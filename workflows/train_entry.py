"""`python -m workflows.train_entry SPEC.json`: one training process (alone or under torchrun).

TrainModel writes the spec (configs as dicts, artifact paths relative to the spec's folder) and starts
this module as an external program, so several processes can train with torch.distributed.run. The
process dies with the one that started it, so a killed workflow leaves no trainer behind.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from models.config import EvalConfig, HeadConfig, ModelConfig, TrainConfig
from models.store_pairs import split_pairs
from models.train import train
from pipeline.captions import Vocabulary
from pipeline.processes import die_with_parent
from pipeline.workspace import write_json_atomic

WITHOUT_FEATURES = "images_without_features.json"


def main(spec_path: str) -> None:
    die_with_parent()
    folder = Path(spec_path).resolve().parent
    spec = json.loads(Path(spec_path).read_text())
    store, captions = folder / spec["store_dir"], folder / spec["captions"]
    vocab = Vocabulary.from_scan_json(folder / spec["vocab"])
    train_split = split_pairs(store, captions, "train", evaluation=False)
    dev_split = split_pairs(store, captions, "dev", evaluation=True)
    write_json_atomic(folder / WITHOUT_FEATURES, {"train": list(train_split.without_features),
                                                  "dev": list(dev_split.without_features)})
    train(ModelConfig(**spec["model"]), TrainConfig(**spec["train"]), len(vocab), train_split.pairs, dev_split.pairs,
          folder, eval_config=EvalConfig(**{**spec["eval"], "modes": tuple(spec["eval"]["modes"])}),
          head_config=HeadConfig(**spec["head"]))


if __name__ == "__main__":
    main(sys.argv[1])
