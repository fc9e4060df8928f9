"""Drop-in use of the reference SCAN's files: checkpoints, precomp features and captions.

Checkpoints are unpickled with ``torch.load(weights_only=True)``: tensors, containers and
primitives only, plus ``argparse.Namespace`` (the reference stores its training flags as
``opt``). Nothing in a checkpoint can run code. The reference's ``model_best.pth.tar`` is
``{"model": [image-encoder state_dict, text-encoder state_dict], "opt": Namespace, "epoch",
"best_rsum", "Eiters"}``; ours is ``{"format": CHECKPOINT_FORMAT, "model": SCANModel
state_dict, "model_config": dict, "train_config": dict, "vocab_size": int, ...}``, plus ``head_config``
when the state dict holds a trained global head (``global_head.*``); without it the model has no head.
"""
from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from models.config import HeadConfig, ModelConfig
from models.data import CaptionPairs, PrecompFeatures, image_index_for_captions
from models.encoders import SCANModel
from pipeline.captions import Vocabulary, tokenize
from pipeline.errors import InputError

CHECKPOINT_FORMAT = "scan-pipeline/1"
_MODEL_FIELDS = {f.name for f in fields(ModelConfig)}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for evaluation and where it came from ("scan" reference or "ours")."""

    model: SCANModel
    vocab_size: int
    origin: str
    checkpoint: dict[str, Any]


def read_checkpoint(path: str | PathLike[str]) -> dict[str, Any]:
    """The checkpoint's top-level dict, unpickled without running any code from the file."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(path, f"refused or unreadable checkpoint: {problem}") from error
    if not isinstance(payload, dict) or "model" not in payload:
        raise InputError(path, "not a SCAN checkpoint: expected a dict with a 'model' entry")
    return payload


def model_config_from_scan_opt(opt: argparse.Namespace | dict[str, Any], *,
                               source: str | PathLike[str]) -> ModelConfig:
    """Maps the reference's training flags (same names as ModelConfig fields) onto ModelConfig."""
    flags = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt)
    try:
        return ModelConfig(**{name: value for name, value in flags.items() if name in _MODEL_FIELDS})
    except (TypeError, ValueError) as error:
        raise InputError(source, f"unusable model flags: {error}", location="opt") from error


def load_model(path: str | PathLike[str], device: torch.device | str = "cpu") -> LoadedModel:
    """A SCANModel in eval mode from a reference ``model_best.pth.tar`` or one of our checkpoints."""
    payload = read_checkpoint(path)
    if payload.get("format") == CHECKPOINT_FORMAT:
        config, vocab_size, origin = _ours_config(payload, path), int(payload["vocab_size"]), "ours"
    else:
        config, vocab_size, origin = _scan_config(payload, path), _scan_vocab_size(payload, path), "scan"
    model = SCANModel(vocab_size, config, _head_config(payload, path) if origin == "ours" else None)
    try:
        if origin == "ours":
            model.load_state_dict(payload["model"])
        else:
            image_state, text_state = payload["model"]
            model.img_enc.load_state_dict(image_state)
            model.txt_enc.load_state_dict(text_state)
    except (RuntimeError, ValueError, TypeError) as error:
        raise InputError(path, f"weights do not fit the configured model: {error}", location="model") from error
    return LoadedModel(model.to(device).eval(), vocab_size, origin, payload)


def load_model_with_vocab(checkpoint: str | PathLike[str], vocab_path: str | PathLike[str],
                          device: torch.device | str = "cpu") -> tuple[LoadedModel, Vocabulary]:
    """A model and the vocabulary it was trained with; a vocabulary of another size is refused."""
    vocab = Vocabulary.from_scan_json(vocab_path)
    loaded = load_model(checkpoint, device)
    if loaded.vocab_size != len(vocab):
        raise InputError(vocab_path, f"{len(vocab)} words, but {checkpoint} was trained with {loaded.vocab_size}")
    return loaded, vocab


def read_scan_captions(path: str | PathLike[str], vocab: Vocabulary) -> list[list[int]]:
    """Token ids of every line of a precomp ``{split}_caps.txt``, as the reference: lower-cased,
    word-tokenised, wrapped in <start>/<end>, unknown words as <unk>."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"unreadable captions file ({error})") from error
    captions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise InputError(path, "empty caption", location=f"line {number}")
        captions.append(vocab.encode(tokenize(line)))
    return captions


def load_precomp_split(data_dir: str | PathLike[str], split: str, vocab: Vocabulary) -> CaptionPairs:
    """``{split}_ims.npy`` (memory-mapped) paired with ``{split}_caps.txt``: caption i -> image i // 5."""
    data_dir = Path(data_dir)
    features = PrecompFeatures(data_dir / f"{split}_ims.npy")
    captions_path = data_dir / f"{split}_caps.txt"
    captions = read_scan_captions(captions_path, vocab)
    return CaptionPairs(features, captions, image_index_for_captions(len(features), len(captions),
                                                                     source=captions_path))


def _ours_config(payload: dict[str, Any], path: str | PathLike[str]) -> ModelConfig:
    try:
        return ModelConfig(**payload["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(path, f"bad model_config: {error}", location="model_config") from error


def _head_config(payload: dict[str, Any], path: str | PathLike[str]) -> HeadConfig | None:
    """The global head's config when the checkpoint carries trained head weights (None: older checkpoints)."""
    if payload.get("head_config") is None:
        return None
    try:
        return HeadConfig(**payload["head_config"])
    except (TypeError, ValueError) as error:
        raise InputError(path, f"bad head_config: {error}", location="head_config") from error


def _scan_config(payload: dict[str, Any], path: str | PathLike[str]) -> ModelConfig:
    if "opt" not in payload:
        raise InputError(path, "reference checkpoint without 'opt' (its training flags)")
    if not (isinstance(payload["model"], (list, tuple)) and len(payload["model"]) == 2):
        raise InputError(path, "expected [image encoder, text encoder] state dicts", location="model")
    return model_config_from_scan_opt(payload["opt"], source=path)


def _scan_vocab_size(payload: dict[str, Any], path: str | PathLike[str]) -> int:
    """From opt.vocab_size, else from the rows of the word embedding."""
    opt = payload["opt"]
    size = vars(opt).get("vocab_size") if isinstance(opt, argparse.Namespace) else opt.get("vocab_size")
    if size is not None:
        return int(size)
    try:
        return int(payload["model"][1]["embed.weight"].shape[0])
    except (KeyError, TypeError, AttributeError) as error:
        raise InputError(path, "no vocab_size in opt and no embed.weight", location="model[1]") from error
