"""GPU check, one call under ~5 minutes: xattn_scores exactness on the device, the time of a
full 1K evaluation scoring (1000 images x 5000 captions), and of one training epoch at
Flickr30K size (145,000 captions, batch 128, synthetic data).

    .venv/bin/python -m benchmarks.gpu_check                       # on cuda
    .venv/bin/python -m benchmarks.gpu_check --device cpu --quick  # tiny sizes, smoke test
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch

from models.config import AGG_FUNCS, RAW_FEATURE_NORMS, ModelConfig
from models.encoders import SCANModel
from models.loss import ContrastiveLoss
from models.reference import reference_xattn_scores
from models.scan import xattn_scores
from benchmarks.bench_scores import matched_set
from benchmarks.bench_train_step import make_batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_exactness(device: torch.device) -> float:
    """Largest |fast - reference| over every option combination, with padded captions and images."""
    images, captions, lengths = matched_set(6, 2, 36, 64, noise=6.0, seed=1)
    images, captions = images.to(device), captions.to(device)
    img_lens = torch.tensor([36, 10, 1, 20, 36, 5])
    worst = 0.0
    for cross_attn, agg_func, norm in itertools.product(("t2i", "i2t"), AGG_FUNCS, RAW_FEATURE_NORMS):
        options = dict(cross_attn=cross_attn, agg_func=agg_func, raw_feature_norm=norm, img_lens=img_lens)
        fast = xattn_scores(images, captions, lengths, **options)
        ref = reference_xattn_scores(images, captions, lengths, **options)
        worst = max(worst, (fast - ref).abs().max().item())
    return worst


def time_evaluation(device: torch.device, n_img: int, dim: int) -> None:
    images, captions, lengths = matched_set(n_img, 5, 36, dim, noise=6.0)
    images, captions = images.to(device), captions.to(device)
    for cross_attn, dtype in itertools.product(("t2i", "i2t"), (torch.float32, torch.bfloat16)):
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            xattn_scores(images.to(dtype), captions.to(dtype), lengths, cross_attn=cross_attn)
        synchronize(device)
        print(f"evaluation scoring {n_img} x {5 * n_img} [{cross_attn}, {dtype}]: "
              f"{time.perf_counter() - start:.2f} s", flush=True)


def time_epoch(device: torch.device, n_captions: int, batch: int, config: ModelConfig, vocab: int) -> None:
    """Full training steps (encoders, scores, loss, backward, Adam) over synthetic batches."""
    torch.manual_seed(0)
    model = SCANModel(vocab, config).to(device)
    loss_fn = ContrastiveLoss(0.2, max_violation=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-4)
    images, captions, lengths = (t.to(device) for t in make_batch(batch, vocab, config))
    steps = n_captions // batch
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        img_emb, cap_emb, cap_lens = model(images, captions, lengths)
        loss = loss_fn(model.similarity(img_emb, None, cap_emb, cap_lens))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimiser.step()
    synchronize(device)
    seconds = time.perf_counter() - start
    print(f"training epoch {steps} steps x batch {batch} ({config.cross_attn}): {seconds:.1f} s "
          f"({seconds / steps * 1e3:.0f} ms/step), last loss {loss.item():.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    worst = check_exactness(device)
    print(f"exactness: max |xattn_scores - reference| = {worst:.2e} ({'PASS' if worst <= 1e-5 else 'FAIL'})")
    if args.quick:
        time_evaluation(device, 20, 64)
        time_epoch(device, 64, 16, ModelConfig(img_dim=64, word_dim=16, embed_size=32), 100)
    else:
        time_evaluation(device, 1000, 1024)
        time_epoch(device, 145_000, 128, ModelConfig(), 8500)


if __name__ == "__main__":
    main()
