"""SCAN training: reference schedule, per-epoch validation, atomic resumable checkpoints, DDP.

One process or many (``torchrun``): every rank encodes its slice of the global batch, the
embeddings are gathered WITH gradient, and each rank scores the whole global batch, so the
hardest negatives are those one process would see. Each rank computes the same global loss;
the gather's backward sums the ranks' gradients (x world) and DDP averages them (/ world),
which gives the one-process gradient.

Data order is a function of (seed, epoch) only, so resuming after epoch k replays exactly
the batches an unbroken run would have seen.

The global head (models.pooling) is trained by default in an extra stage after SCAN's epochs with
SCAN's encoders frozen (models.head_training), so SCAN itself trains exactly as without it; with
``HeadConfig(head_training="joint")`` its triplet loss is added to SCAN's from the first step instead.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather as all_gather_with_grad
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from models.compat import CHECKPOINT_FORMAT, load_precomp_split, read_checkpoint
from models.config import EvalConfig, HeadConfig, ModelConfig, TrainConfig
from models.data import CaptionBatch, CaptionPairs
from models.encoders import SCANModel
from models.evaluate import evaluate_models, evaluation_pairs
from models.loss import ContrastiveLoss
from pipeline.atomic import atomic_output, remove_abandoned_temp_files, write_text_atomic
from pipeline.captions import Vocabulary
from pipeline.devices import resolve_device
from pipeline.processes import exclusive_folder
from pipeline.errors import InputError

LAST_CHECKPOINT = "checkpoint.pth"
BEST_CHECKPOINT = "model_best.pth"
SUMMARY = "summary.json"
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank, world size, and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, ranks: Ranks) -> list[list[int]]:
    """This rank's share of each global batch of a seeded permutation of 0..n-1.

    The last global batch is cut to a multiple of the world size (nothing is cut on one process).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = []
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        batch = batch[: len(batch) - len(batch) % ranks.world]
        share = len(batch) // ranks.world
        if share:
            batches.append(batch[ranks.rank * share:(ranks.rank + 1) * share].tolist())
    return batches


def train(model_config: ModelConfig, train_config: TrainConfig, vocab_size: int,
          train_pairs: CaptionPairs, dev_pairs: CaptionPairs, out_dir: str | PathLike[str], *,
          eval_config: EvalConfig = EvalConfig(split="dev"), progress: Progress | None = None,
          head_config: HeadConfig = HeadConfig()) -> dict:
    """Trains (resuming from ``out_dir/checkpoint.pth`` if present) and returns the summary.

    Works alone or under torchrun (WORLD_SIZE > 1: gloo on CPU, nccl on GPU). Rank 0 writes
    ``checkpoint.pth`` every epoch, ``model_best.pth`` on a better dev rsum, TensorBoard
    scalars under ``tensorboard/`` and ``summary.json``; then the head stage (``head_config``)
    adds the trained global head to ``model_best.pth``.
    """
    out_dir = Path(out_dir)
    started_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    ranks = _start_ranks(train_config)
    try:
        if train_config.batch_size % ranks.world:
            raise ValueError(f"batch_size {train_config.batch_size} does not split over {ranks.world} processes")
        if train_config.bf16 and ranks.device.type != "cuda":
            raise ValueError("bf16 autocast needs a CUDA device")
        joint = head_config if head_config.enabled and head_config.head_training == "joint" else None
        # Rank 0 is the only writer; a second run on the same folder would interleave checkpoints.
        with exclusive_folder(out_dir, "training") if ranks.is_main else nullcontext():
            state = _TrainingState.create(model_config, train_config, vocab_size, ranks, out_dir, joint)
            _run_epochs(state, train_pairs, dev_pairs, eval_config, progress)
        if ranks.world > 1:
            dist.barrier()  # the others wait for rank 0's last validation and checkpoint
        if not head_config.extra_stage:
            return state.summary()
        from models.head_training import train_head  # it builds on this module's helpers

        return train_head(state.summary(), model_config, train_config, head_config, vocab_size, train_pairs,
                          dev_pairs, out_dir, ranks, eval_config, progress)
    finally:
        if started_group:
            dist.destroy_process_group()


def _run_epochs(state: _TrainingState, train_pairs: CaptionPairs, dev_pairs: CaptionPairs, eval_config: EvalConfig,
                progress: Progress | None) -> None:
    writer = SummaryWriter(state.out_dir / "tensorboard") if state.ranks.is_main else None
    try:
        for epoch in range(state.epoch, state.config.num_epochs):
            _train_epoch(state, train_pairs, epoch, writer, progress)
            state.epoch = epoch + 1
            _validate_and_save(state, dev_pairs, eval_config, writer, progress)
    finally:
        if writer is not None:
            writer.close()


def write_train_job(path: str | PathLike[str], *, model_config: ModelConfig, train_config: TrainConfig,
                    data_dir: str | PathLike[str], vocab: str | PathLike[str], out_dir: str | PathLike[str],
                    train_split: str = "train", dev_split: str = "dev",
                    eval_config: EvalConfig = EvalConfig(split="dev"), head_config: HeadConfig = HeadConfig()) -> Path:
    """Writes the JSON job that ``python -m models train --config PATH`` (alone or under torchrun)
    runs on SCAN precomp data: ``{split}_ims.npy`` / ``{split}_caps.txt`` in ``data_dir``."""
    job = {"model": asdict(model_config), "train": asdict(train_config), "eval": asdict(eval_config),
           "head": asdict(head_config),
           "data": {"dir": str(data_dir), "vocab": str(vocab), "train_split": train_split, "dev_split": dev_split},
           "out_dir": str(out_dir)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(job, indent=2))
    return path


def run_train_job(path: str | PathLike[str], progress: Progress | None = None) -> dict:
    """Reads a job written by ``write_train_job`` and trains (one rank of it under torchrun)."""
    try:
        job = json.loads(Path(path).read_text())
        configs = ModelConfig(**job["model"]), TrainConfig(**job["train"]), _eval_config(job["eval"])
        head = HeadConfig(**job.get("head", {}))  # jobs written before the head existed: the default head
        data = job["data"]
        vocab_path, data_dir, splits = data["vocab"], data["dir"], (data["train_split"], data["dev_split"])
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise InputError(path, f"not a training job ({error})") from error
    vocab = Vocabulary.from_scan_json(vocab_path)
    train_pairs, dev_pairs = (load_precomp_split(data_dir, split, vocab) for split in splits)
    dev_pairs, _ = evaluation_pairs(dev_pairs, "dev", configs[2].reference_dev)
    return train(configs[0], configs[1], len(vocab), train_pairs, dev_pairs, job["out_dir"],
                 eval_config=configs[2], progress=progress, head_config=head)


def _eval_config(values: dict[str, Any]) -> EvalConfig:
    """EvalConfig from JSON (lists back to tuples)."""
    return EvalConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


def _start_ranks(config: TrainConfig) -> Ranks:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Ranks(dist.get_rank() if world > 1 else 0, world, device)


class _TrainingState:
    """Model, optimiser, schedule and counters: everything a checkpoint must restore."""

    def __init__(self, model: SCANModel, config: TrainConfig, vocab_size: int, ranks: Ranks,
                 out_dir: Path) -> None:
        self.model, self.config, self.vocab_size, self.ranks, self.out_dir = model, config, vocab_size, ranks, out_dir
        self.wrapped = DistributedDataParallel(model) if ranks.world > 1 else model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_update, gamma=0.1)
        self.loss = ContrastiveLoss.from_config(config)
        self.head_loss = ContrastiveLoss.from_config(config)  # joint training only: the pooled cosine's term
        self.epoch, self.step, self.best_rsum, self.best_epoch = 0, 0, -1.0, -1
        self.history: list[dict[str, Any]] = []

    @classmethod
    def create(cls, model_config: ModelConfig, config: TrainConfig, vocab_size: int, ranks: Ranks,
               out_dir: Path, joint_head: HeadConfig | None = None) -> _TrainingState:
        _seed_everything(config.seed)
        model = SCANModel(vocab_size, model_config, joint_head).to(ranks.device)
        state = cls(model, config, vocab_size, ranks, out_dir)
        if ranks.is_main:  # one trainer per run folder: a temp checkpoint found now was left by a killed run
            remove_abandoned_temp_files(out_dir)
        if (out_dir / LAST_CHECKPOINT).is_file():
            state.restore(read_checkpoint(out_dir / LAST_CHECKPOINT))
        return state

    def payload(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "model_config": asdict(self.model.config), "train_config": asdict(self.config),
                "vocab_size": self.vocab_size, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step": self.step,
                "best_rsum": self.best_rsum, "best_epoch": self.best_epoch, "history": self.history,
                "world_size": self.ranks.world, "rng": _rng_states(),
                **({} if self.model.global_head is None else {"head_config": asdict(self.model.global_head.config)})}

    def restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.best_rsum, self.best_epoch = float(payload["best_rsum"]), int(payload["best_epoch"])
        self.history = list(payload["history"])
        _set_rng_states(payload["rng"])

    def summary(self) -> dict[str, Any]:
        return {"epochs": self.epoch, "steps": self.step, "best_rsum": self.best_rsum,
                "best_epoch": self.best_epoch, "history": self.history,
                "checkpoint": LAST_CHECKPOINT, "best_checkpoint": BEST_CHECKPOINT}  # beside summary.json


def _train_epoch(state: _TrainingState, pairs: CaptionPairs, epoch: int, writer: SummaryWriter | None,
                 progress: Progress | None) -> None:
    config, ranks = state.config, state.ranks
    state.loss.set_epoch(epoch)
    state.head_loss.set_epoch(epoch)
    state.model.train()
    batches = epoch_batches(len(pairs), config.batch_size, config.seed, epoch, ranks)
    loader = torch.utils.data.DataLoader(pairs, sampler=batches, batch_size=None, num_workers=config.workers)
    for batch in tqdm(loader, total=len(batches), desc=f"epoch {epoch}", disable=not ranks.is_main):
        loss = _train_step(state, batch)
        state.step += 1
        if state.step % config.log_step == 0 and ranks.is_main:
            lr = state.optimizer.param_groups[0]["lr"]
            if writer is not None:
                writer.add_scalar("train/loss", loss, state.step)
                writer.add_scalar("train/lr", lr, state.step)
            if progress is not None:
                progress({"epoch": epoch, "step": state.step, "loss": loss, "lr": lr})
    state.scheduler.step()


def _train_step(state: _TrainingState, batch: CaptionBatch) -> float:
    device = state.ranks.device
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if state.config.bf16 else nullcontext())
    with autocast:
        img_emb, cap_emb, cap_lens = state.wrapped(batch.images.to(device), batch.captions.to(device),
                                                   batch.lengths)
        img_lens = batch.image_lens.to(device)
        if state.ranks.world > 1:
            img_emb, img_lens, cap_emb, cap_lens = _gather_batch(img_emb, img_lens, cap_emb, cap_lens.to(device))
        scores = state.model.similarity(img_emb, img_lens, cap_emb, cap_lens.cpu())
    loss = state.loss(scores.float())
    if state.model.global_head is not None:  # joint training: the head's term beside SCAN's
        img_vec, cap_vec = state.model.global_head(img_emb, img_lens, cap_emb, cap_lens.to(cap_emb.device))
        loss = loss + state.model.global_head.config.head_weight * state.head_loss((img_vec @ cap_vec.T).float())
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if state.config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), state.config.grad_clip)
    state.optimizer.step()
    return float(loss.detach())


def _gather_batch(img_emb: Tensor, img_lens: Tensor, cap_emb: Tensor,
                  cap_lens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The global batch from every rank's share, in rank order; embeddings keep their gradient.

    Captions are padded to the longest in the global batch first (all_gather needs equal shapes).
    """
    lens = _gather_plain(cap_lens)
    width = int(lens.max())
    cap_emb = torch.nn.functional.pad(cap_emb, (0, 0, 0, width - cap_emb.size(1)))
    return (torch.cat(all_gather_with_grad(img_emb.contiguous())), _gather_plain(img_lens),
            torch.cat(all_gather_with_grad(cap_emb.contiguous())), lens)


def _gather_plain(values: Tensor) -> Tensor:
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def _validate_and_save(state: _TrainingState, dev_pairs: CaptionPairs, eval_config: EvalConfig,
                       writer: SummaryWriter | None, progress: Progress | None) -> None:
    """Rank 0: dev rsum, TensorBoard, last checkpoint, best checkpoint, summary (all atomic)."""
    if not state.ranks.is_main:
        return
    results, _ = evaluate_models([state.model], dev_pairs, eval_config, state.ranks.device)
    state.history.append({"epoch": state.epoch, "step": state.step, **results})
    if writer is not None:
        for direction in ("i2t", "t2i"):
            for key in ("r1", "r5", "r10"):
                writer.add_scalar(f"dev/{direction}_{key}", results[direction][key], state.epoch)
        writer.add_scalar("dev/rsum", results["rsum"], state.epoch)
    improved = results["rsum"] > state.best_rsum
    if improved:
        state.best_rsum, state.best_epoch = results["rsum"], state.epoch
    state.out_dir.mkdir(parents=True, exist_ok=True)
    payload = state.payload()
    if improved:  # best first: a crash before the last checkpoint redoes this epoch and rewrites both
        _save_checkpoint(payload, state.out_dir / BEST_CHECKPOINT)
    _save_checkpoint(payload, state.out_dir / LAST_CHECKPOINT)
    write_text_atomic(state.out_dir / SUMMARY, json.dumps(state.summary(), indent=2))
    if progress is not None:
        progress({"epoch": state.epoch, "step": state.step, "rsum": results["rsum"], "done": True})


def _save_checkpoint(payload: dict[str, Any], target: Path) -> None:
    with atomic_output(target) as temporary:
        torch.save(payload, temporary)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_states() -> dict[str, Any]:
    """Python, numpy and torch generator states as plain values (weights_only can load them)."""
    name, key, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, key.tolist(), position, has_gauss, cached],
            "torch": torch.get_rng_state()}


def _set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"].cpu())
