"""Our checkpoints as the reference SCAN's files, so its ``evalrank`` (and the evaluation scripts built
on it) can load a model trained here.

The reference reads ``model_best.pth.tar`` (kuanghuei/SCAN train.py:145-151): ``model`` is
``[image-encoder state_dict, text-encoder state_dict]`` (model.py:411-413), ``opt`` the argparse
Namespace of its training flags (train.py:33-90, plus ``vocab_size``, train.py:99), from which
evaluation.py:148-162 rebuilds the model and finds the vocabulary,
``{opt.vocab_path}/{opt.data_name}_vocab.json``; ``epoch``, ``best_rsum`` and ``Eiters`` serve its
resume. The export writes that dict and the vocabulary beside it.
"""
from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from models.compat import load_model
from models.config import ModelConfig, TrainConfig
from models.encoders import SCANModel
from pipeline.atomic import atomic_output
from pipeline.captions import Vocabulary
from pipeline.errors import InputError

REFERENCE_CHECKPOINT = "model_best.pth.tar"
VOCAB_SUFFIX = "_vocab.json"
# Key order of the reference image encoders' state_dict: nn.Linear (model.py:63) holds weight, bias;
# weight_norm(nn.Linear, dim=None) (model.py:106) re-registers the weight as weight_g, weight_v after bias.
REFERENCE_IMAGE_KEYS = {"basic": ("fc.weight", "fc.bias"), "weight_norm": ("fc.bias", "fc.weight_g", "fc.weight_v")}
# The reference's training flags that are ours too (same names), and the type its argparse gives them.
SHARED_TRAIN_FLAGS = {"margin": float, "num_epochs": int, "batch_size": int, "grad_clip": float,
                      "learning_rate": float, "lr_update": int, "workers": int, "log_step": int, "max_violation": bool}
FLOAT_MODEL_FLAGS = ("lambda_lse", "lambda_softmax")
REFERENCE_VAL_STEP = 500  # train.py default; we validate once per epoch, which the reference also does


@dataclass(frozen=True)
class ExportedFiles:
    """What ``export_scan`` wrote."""

    checkpoint: Path
    vocab: Path


def export_scan(checkpoint: str | PathLike[str], vocab_path: str | PathLike[str], out_dir: str | PathLike[str], *,
                data_name: str | None = None, data_path: str = "./data/") -> ExportedFiles:
    """Writes ``out_dir/model_best.pth.tar`` and ``out_dir/{data_name}_vocab.json`` from one of our checkpoints.

    ``data_name`` (e.g. ``f30k_precomp``) names the vocabulary file and the data folder under
    ``data_path`` for the reference; by default it is taken from a vocabulary named ``X_vocab.json``.
    ``opt.vocab_path`` is ``out_dir`` (absolute). Both files are written atomically.
    """
    loaded = load_model(checkpoint)
    if loaded.origin != "ours":
        raise InputError(checkpoint, "already a reference SCAN checkpoint; nothing to export")
    vocab = Vocabulary.from_scan_json(vocab_path)
    if len(vocab) != loaded.vocab_size:
        raise InputError(vocab_path, f"{len(vocab)} words, but {checkpoint} was trained with {loaded.vocab_size}")
    data_name = data_name or _data_name_from(Path(vocab_path))
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"epoch": _field(loaded.checkpoint, "epoch", checkpoint, int) - 1,  # reference: 0-based epoch index
               "model": reference_state_dicts(loaded.model),
               "best_rsum": _field(loaded.checkpoint, "best_rsum", checkpoint, float),
               "opt": reference_opt(loaded.model.config, _train_config(loaded.checkpoint, checkpoint), len(vocab),
                                    data_name=data_name, data_path=data_path, out_dir=out_dir),
               "Eiters": _field(loaded.checkpoint, "step", checkpoint, int)}
    files = ExportedFiles(out_dir / REFERENCE_CHECKPOINT, out_dir / f"{data_name}{VOCAB_SUFFIX}")
    with atomic_output(files.checkpoint) as temporary:
        # legacy (non-zip) serialisation, as the PyTorch generation of the reference wrote
        torch.save(payload, temporary, _use_new_zipfile_serialization=False)
    vocab.save_scan_json(files.vocab)
    return files


def reference_state_dicts(model: SCANModel) -> list[OrderedDict[str, torch.Tensor]]:
    """``[image encoder, text encoder]`` state dicts with the reference modules' keys, in their order."""
    image = model.img_enc.state_dict()
    ordered = OrderedDict((key, image[key]) for key in REFERENCE_IMAGE_KEYS[model.config.precomp_enc_type])
    ordered._metadata = image._metadata  # type: ignore[attr-defined]  # module versions, as state_dict() keeps them
    return [ordered, model.txt_enc.state_dict()]


def reference_opt(model: ModelConfig, train: TrainConfig, vocab_size: int, *, data_name: str, data_path: str,
                  out_dir: Path) -> argparse.Namespace:
    """Every flag of the reference's train.py parser, with the types its argparse gives, plus vocab_size."""
    flags: dict[str, Any] = {"data_path": data_path, "data_name": data_name, "vocab_path": str(out_dir),
                             "val_step": REFERENCE_VAL_STEP, "logger_name": str(out_dir / "log"),
                             "model_name": str(out_dir), "resume": ""}
    flags.update({name: kind(getattr(train, name)) for name, kind in SHARED_TRAIN_FLAGS.items()})
    flags.update({spec.name: getattr(model, spec.name) for spec in fields(ModelConfig)})
    flags.update({name: float(flags[name]) for name in FLOAT_MODEL_FLAGS})
    flags["vocab_size"] = vocab_size
    return argparse.Namespace(**flags)


def _data_name_from(vocab_path: Path) -> str:
    if vocab_path.name.endswith(VOCAB_SUFFIX) and len(vocab_path.name) > len(VOCAB_SUFFIX):
        return vocab_path.name[: -len(VOCAB_SUFFIX)]
    raise InputError(vocab_path, f"the dataset name cannot be read from the file name (X{VOCAB_SUFFIX}); "
                                 "pass it, e.g. --data-name f30k_precomp")


def _train_config(payload: dict[str, Any], path: str | PathLike[str]) -> TrainConfig:
    try:
        return TrainConfig(**payload["train_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(path, f"bad train_config: {error}", location="train_config") from error


def _field(payload: dict[str, Any], name: str, path: str | PathLike[str], kind: type) -> Any:
    try:
        return kind(payload[name])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(path, f"no usable {name!r} ({error})", location=name) from error
