"""The head stage: the global head trained on top of SCAN's best encoders, which stay frozen.

It runs after SCAN's epochs (``models.train.train``), so SCAN trains exactly as it would without a
head, and its encoders in ``model_best.pth`` are unchanged: the stage only adds ``global_head.*``
weights and ``head_config`` to that checkpoint. Each step encodes a batch with the frozen encoders,
pools it with the head and applies the hinge triplet loss (hardest negatives after
``head_warmup_epochs``) to the pooled cosines. Validation is the global model's dev rsum; the best
epoch's head goes into ``model_best.pth``. ``head_checkpoint.pth`` makes the stage resumable.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.distributed.nn.functional import all_gather as all_gather_with_grad
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.compat import read_checkpoint
from models.config import EvalConfig, HeadConfig, ModelConfig, TrainConfig
from models.data import CaptionBatch, CaptionPairs
from models.encoders import SCANModel
from models.evaluate import encode_split, evaluate_similarities, global_similarity
from models.loss import ContrastiveLoss
from models.pooling import GlobalHead
from models.train import (BEST_CHECKPOINT, SUMMARY, Progress, Ranks, _rng_states, _save_checkpoint, _set_rng_states,
                          epoch_batches)
from pipeline.atomic import write_text_atomic
from pipeline.errors import InputError

HEAD_CHECKPOINT = "head_checkpoint.pth"
HEAD_CHECKPOINT_FORMAT = "scan-pipeline/head-stage/1"
HEAD_STATE_KEYS = ("model", "optimizer", "epoch", "best_rsum", "best_epoch", "history", "rng")
HEAD_SEED_OFFSET = 1  # the head's initialisation draws from seed + 1, apart from SCAN's


class _HeadStage:
    """The frozen model, the head being trained, its optimiser and counters."""

    def __init__(self, model: SCANModel, head_config: HeadConfig, train_config: TrainConfig, ranks: Ranks) -> None:
        self.model, self.head, self.ranks = model, model.global_head, ranks
        model.img_enc.requires_grad_(False)
        model.txt_enc.requires_grad_(False)
        self.wrapped = DistributedDataParallel(self.head) if ranks.world > 1 else self.head
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=head_config.head_learning_rate)
        self.loss = ContrastiveLoss(train_config.margin, train_config.max_violation, head_config.head_warmup_epochs)
        self.epoch, self.best_rsum, self.best_epoch, self.history = 0, -1.0, -1, []

    def payload(self) -> dict[str, Any]:
        return {"format": HEAD_CHECKPOINT_FORMAT, "model": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                "best_rsum": self.best_rsum, "best_epoch": self.best_epoch, "history": self.history,
                "rng": _rng_states()}

    def restore(self, payload: dict[str, Any]) -> None:
        self.head.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.epoch, self.best_rsum, self.best_epoch = (int(payload["epoch"]), float(payload["best_rsum"]),
                                                       int(payload["best_epoch"]))
        self.history = list(payload["history"])
        _set_rng_states(payload["rng"])

    def summary(self) -> dict[str, Any]:
        return {"pooling": self.head.config.pooling, "epochs": self.epoch, "best_rsum": self.best_rsum,
                "best_epoch": self.best_epoch, "history": self.history}


def read_head_checkpoint(path: Path) -> dict[str, Any]:
    """The head stage's resumable state (the head alone, not a model: ``load_model`` cannot read it)."""
    payload = read_checkpoint(path)
    missing = [key for key in HEAD_STATE_KEYS if key not in payload]
    if missing or payload.get("format", HEAD_CHECKPOINT_FORMAT) != HEAD_CHECKPOINT_FORMAT:
        raise InputError(path, f"not a head-stage checkpoint (format {payload.get('format')!r}"
                               f"{', missing ' + ', '.join(missing) if missing else ''})")
    return payload


def train_head(scan_summary: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig,
               head_config: HeadConfig, vocab_size: int, train_pairs: CaptionPairs, dev_pairs: CaptionPairs,
               out_dir: Path, ranks: Ranks, eval_config: EvalConfig, progress: Progress | None) -> dict[str, Any]:
    """Trains the head on the frozen encoders of ``out_dir/model_best.pth``; returns the summary with "head"."""
    best_payload = read_checkpoint(out_dir / BEST_CHECKPOINT)
    stage = _HeadStage(_frozen_model(best_payload, model_config, head_config, train_config, vocab_size, ranks),
                       head_config, train_config, ranks)
    if (out_dir / HEAD_CHECKPOINT).is_file():
        stage.restore(read_head_checkpoint(out_dir / HEAD_CHECKPOINT))
    for epoch in range(stage.epoch, head_config.head_epochs):
        _head_epoch(stage, train_pairs, train_config, epoch)
        stage.epoch = epoch + 1
        if ranks.is_main:
            _validate_and_save(stage, best_payload, dev_pairs, eval_config, scan_summary, out_dir)
            if progress is not None:
                progress({"head_epoch": stage.epoch, "head_rsum": stage.history[-1]["rsum"], "done": True})
    if ranks.world > 1:
        torch.distributed.barrier()
    return {**scan_summary, "head": stage.summary()}


def _frozen_model(best_payload: dict[str, Any], model_config: ModelConfig, head_config: HeadConfig,
                  train_config: TrainConfig, vocab_size: int, ranks: Ranks) -> SCANModel:
    """SCAN's best encoders (weights as saved) plus a freshly initialised head."""
    model = SCANModel(vocab_size, model_config)
    scan_weights = {key: value for key, value in best_payload["model"].items() if not key.startswith("global_head.")}
    model.load_state_dict(scan_weights)
    torch.manual_seed(train_config.seed + HEAD_SEED_OFFSET)
    model.global_head = GlobalHead(model_config.embed_size, head_config)
    return model.to(ranks.device).eval()


def _head_epoch(stage: _HeadStage, pairs: CaptionPairs, config: TrainConfig, epoch: int) -> None:
    stage.loss.set_epoch(epoch)
    stage.head.train()
    batches = epoch_batches(len(pairs), config.batch_size, config.seed, config.num_epochs + epoch, stage.ranks)
    loader = torch.utils.data.DataLoader(pairs, sampler=batches, batch_size=None, num_workers=config.workers)
    for batch in tqdm(loader, total=len(batches), desc=f"head epoch {epoch}", disable=not stage.ranks.is_main):
        _head_step(stage, batch, config.grad_clip)


def _head_step(stage: _HeadStage, batch: CaptionBatch, grad_clip: float) -> float:
    device = stage.ranks.device
    with torch.no_grad():
        img_emb, cap_emb, cap_lens = stage.model(batch.images.to(device), batch.captions.to(device), batch.lengths)
    img_vec, cap_vec = stage.wrapped(img_emb, batch.image_lens.to(device), cap_emb, cap_lens.to(device))
    if stage.ranks.world > 1:
        img_vec, cap_vec = torch.cat(all_gather_with_grad(img_vec)), torch.cat(all_gather_with_grad(cap_vec))
    loss = stage.loss((img_vec @ cap_vec.T).float())
    stage.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(stage.head.parameters(), grad_clip)
    stage.optimizer.step()
    return float(loss.detach())


def _validate_and_save(stage: _HeadStage, best_payload: dict[str, Any], dev_pairs: CaptionPairs,
                       eval_config: EvalConfig, scan_summary: dict[str, Any], out_dir: Path) -> None:
    """Rank 0: the global model's dev rsum; the best head into model_best.pth; resume file; summary."""
    encoded = encode_split(stage.model, dev_pairs, eval_config, stage.ranks.device, vectors=True)
    results, _ = evaluate_similarities(lambda i, c: global_similarity(encoded, i, c), len(dev_pairs.regions),
                                       fold5=False)
    stage.history.append({"head_epoch": stage.epoch, **results})
    if results["rsum"] > stage.best_rsum:
        stage.best_rsum, stage.best_epoch = results["rsum"], stage.epoch
        _save_checkpoint({**best_payload, "model": stage.model.state_dict(),
                          "head_config": asdict(stage.head.config), "head": stage.summary()},
                         out_dir / BEST_CHECKPOINT)
    _save_checkpoint(stage.payload(), out_dir / HEAD_CHECKPOINT)
    write_text_atomic(out_dir / SUMMARY, json.dumps({**scan_summary, "head": stage.summary()}, indent=2))
