"""One SCAN training step (encoders + scores + hardest-negative loss, forward + backward):
reference scoring formulation vs xattn_scores, time and peak memory.

Each variant runs in its own fresh process (spawn), so their memory does not mix. Peak memory
is the rise of the process's peak resident set size (``ru_maxrss``) over the first step,
measured from when inputs and model exist: it counts every tensor the step allocates
(activations kept for backward, temporaries, and the parameters' gradients, the same in
both variants) on the CPU. Time is the median of the following steps.

    .venv/bin/python benchmarks/bench_train_step.py            # batch 128 (as in training)
    .venv/bin/python benchmarks/bench_train_step.py --quick    # batch 32, small dims
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time

import torch

from models.config import ModelConfig
from models.encoders import SCANModel
from models.loss import ContrastiveLoss
from models.reference import reference_xattn_scores

CONFIGS = {
    "full": dict(batch=128, vocab=8500, model=ModelConfig()),
    "quick": dict(batch=32, vocab=500, model=ModelConfig(img_dim=256, word_dim=64, embed_size=128)),
}


def make_batch(batch: int, vocab: int, config: ModelConfig, seed: int = 0):
    """Region features (B, 36, img_dim), token ids (B, W) and Flickr30K-like lengths (B,)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(batch, generator=gen) * 0.38 + 2.42).round().clamp(4, 40).long()
    images = torch.randn(batch, 36, config.img_dim, generator=gen).relu()
    captions = torch.randint(1, vocab, (batch, int(lengths.max())), generator=gen)
    return images, captions, lengths


def train_step(model: SCANModel, loss_fn: ContrastiveLoss, batch, reference: bool) -> None:
    images, captions, lengths = batch
    img_emb, cap_emb, cap_lens = model(images, captions, lengths)
    if reference:
        c = model.config
        scores = reference_xattn_scores(img_emb, cap_emb, cap_lens, cross_attn=c.cross_attn, agg_func=c.agg_func,
                                        lambda_softmax=c.lambda_softmax, lambda_lse=c.lambda_lse,
                                        raw_feature_norm=c.raw_feature_norm)
    else:
        scores = model.similarity(img_emb, None, cap_emb, cap_lens)
    model.zero_grad(set_to_none=True)
    loss_fn(scores).backward()


def measure(size: str, cross_attn: str, reference: bool, steps: int, queue) -> None:
    """Runs in a child process: puts (seconds per step, peak RSS rise in MiB)."""
    torch.manual_seed(0)
    setting = CONFIGS[size]
    config = ModelConfig(**{**setting["model"].__dict__, "cross_attn": cross_attn,
                            "lambda_softmax": 9.0 if cross_attn == "t2i" else 4.0})
    model, loss_fn = SCANModel(setting["vocab"], config), ContrastiveLoss(0.2, max_violation=True)
    batch = make_batch(setting["batch"], setting["vocab"], config)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_step(model, loss_fn, batch, reference)  # first step: its peak is the one measured
    peak_rise_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, loss_fn, batch, reference)
        times.append(time.perf_counter() - start)
    queue.put((statistics.median(times), peak_rise_mib))


def run_isolated(size: str, cross_attn: str, reference: bool, steps: int) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=measure, args=(size, cross_attn, reference, steps, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 32 and small dimensions")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after the measured first step)")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    setting = CONFIGS[size]
    print(f"batch {setting['batch']}, R=36, {setting['model']}, vocab {setting['vocab']}, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps after the first")
    for cross_attn in ("t2i", "i2t"):
        ref_time, ref_mem = run_isolated(size, cross_attn, True, args.steps)
        our_time, our_mem = run_isolated(size, cross_attn, False, args.steps)
        print(f"[{cross_attn}] reference: {ref_time:.2f} s/step, peak RSS rise {ref_mem:.0f} MiB; "
              f"xattn_scores: {our_time:.2f} s/step, peak RSS rise {our_mem:.0f} MiB")
        print(f"[{cross_attn}] speed-up {ref_time / our_time:.1f}x (target >= 3x); "
              f"peak memory {ref_mem / max(our_mem, 1.0):.1f}x lower (target >= 5x)")


if __name__ == "__main__":
    main()
