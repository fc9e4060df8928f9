"""`python -m workflows.train_entry SPEC.json`: one training process (alone or under torchrun).

TrainModel writes the spec (configs as dicts, artifact paths) and starts this module as an
external program, so several processes can train with torch.distributed.run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from models.config import EvalConfig, HeadConfig, ModelConfig, TrainConfig
from models.train import train
from pipeline.captions import Vocabulary
from models.store_pairs import split_pairs


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    store, captions = Path(spec["store_dir"]), Path(spec["captions"])
    vocab = Vocabulary.from_scan_json(spec["vocab"])
    train(ModelConfig(**spec["model"]), TrainConfig(**spec["train"]), len(vocab),
          split_pairs(store, captions, "train", evaluation=False), split_pairs(store, captions, "dev", evaluation=True),
          spec["out_dir"], eval_config=EvalConfig(**{**spec["eval"], "modes": tuple(spec["eval"]["modes"])}),
          head_config=HeadConfig(**spec["head"]))


if __name__ == "__main__":
    main(sys.argv[1])
