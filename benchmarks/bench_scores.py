"""Scoring speed: reference SCAN formulation vs xattn_scores vs one matmul of all regions x words.

Synthetic 1K-test-sized data (1000 images x 5000 captions, R=36, d=1024, Flickr30K-like
caption lengths), where each caption's words are noisy copies of its image's regions, so
retrieval recall is meaningful. Prints times and ratios measured in the same run: xattn_scores
as called (float32 on the CPU: the fused kernel of models.fused) and its eager PyTorch path,
plus the bf16 scoring mode's speed and its effect on R@1/5/10. Each fp32 time (reference,
ours, matmul) is the best of ``--repeats`` runs: on a shared machine the noise is larger than
the differences measured.

    .venv/bin/python benchmarks/bench_scores.py            # full size (minutes)
    .venv/bin/python benchmarks/bench_scores.py --quick    # small size (seconds)
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.functional import normalize

from models import fused
from models.config import ModelConfig
from models.reference import reference_xattn_scores
from models.scan import scores_within_budget, xattn_scores

ATTENTION = {"t2i": dict(cross_attn="t2i", lambda_softmax=9.0), "i2t": dict(cross_attn="i2t", lambda_softmax=4.0)}


def caption_lengths(n_cap: int, gen: torch.Generator) -> Tensor:
    """Flickr30K-like lengths: log-normal around 11-12 words, clipped to [4, 40]."""
    lengths = torch.exp(torch.randn(n_cap, generator=gen) * 0.38 + 2.42).round().clamp(4, 40).long()
    lengths[0] = 40
    return lengths


def matched_set(n_img: int, per_image: int, n_regions: int, dim: int, noise: float, seed: int = 0):
    """Images (n_img, R, d) and captions (n_img * per_image, W, d); caption c describes image c // per_image."""
    gen = torch.Generator().manual_seed(seed)
    images = normalize(torch.randn(n_img, n_regions, dim, generator=gen), dim=-1)
    lengths = caption_lengths(n_img * per_image, gen)
    owner = torch.arange(n_img).repeat_interleave(per_image)
    picked = torch.randint(0, n_regions, (owner.numel(), int(lengths.max())), generator=gen)
    captions = images[owner[:, None], picked]
    captions = normalize(captions + noise * torch.randn(captions.shape, generator=gen) / dim**0.5, dim=-1)
    captions *= (torch.arange(captions.size(1)) < lengths[:, None])[..., None]
    return images, captions, lengths


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last call's result."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def region_word_matmul(images: Tensor, captions: Tensor, lengths: Tensor, rows: int = 4096) -> None:
    """All regions x all real words in one GEMM, in row chunks into a reused buffer (same FLOPs)."""
    words = torch.cat([captions[i, :n] for i, n in enumerate(lengths.tolist())])
    regions = images.reshape(-1, images.size(-1))
    out = regions.new_empty(rows, words.size(0))
    for start in range(0, regions.size(0), rows):
        chunk = regions[start:start + rows]
        torch.matmul(chunk, words.T, out=out[:chunk.size(0)])


def recall_at(scores: Tensor, per_image: int, ks=(1, 5, 10)) -> dict[str, float]:
    """Image->text (any of its captions) and text->image recall, in percent."""
    n_img = scores.size(0)
    owner = torch.arange(scores.size(1)) // per_image
    image_rank = (scores.argsort(dim=1, descending=True) // per_image == torch.arange(n_img)[:, None])
    first_hit = image_rank.float().argmax(dim=1)
    caption_rank = (scores.T.argsort(dim=1, descending=True) == owner[:, None]).float().argmax(dim=1)
    out = {}
    for k in ks:
        out[f"i2t R@{k}"] = 100.0 * (first_hit < k).float().mean().item()
        out[f"t2i R@{k}"] = 100.0 * (caption_rank < k).float().mean().item()
    return out


def run(n_img: int, per_image: int, ref_captions: int, dim: int, noise: float, repeats: int) -> None:
    images, captions, lengths = matched_set(n_img, per_image, 36, dim, noise)
    n_cap = captions.size(0)
    print(f"{n_img} images x {n_cap} captions, R=36, d={dim}, {int(lengths.sum())} real words "
          f"(mean length {lengths.float().mean():.1f}, max {int(lengths.max())}), "
          f"{torch.get_num_threads()} threads, best of {repeats} runs")
    t_kernel, ready = timed(fused.available)
    print(f"fused kernel {'ready' if ready else 'UNAVAILABLE (eager PyTorch only)'} in {t_kernel:.1f} s "
          "(built on first use on a machine, then loaded from the torch extensions cache)")
    with torch.no_grad():
        t_matmul, _ = timed(lambda: region_word_matmul(images, captions, lengths), repeats)
        print(f"big matmul (all regions x all real words, fp32): {t_matmul:.2f} s")
        for name, options in ATTENTION.items():
            subset = slice(0, ref_captions)
            t_ref, ref = timed(lambda: reference_xattn_scores(images, captions[subset], lengths[subset], **options),
                               repeats)
            t_ref_full = t_ref * n_cap / ref_captions
            t_fast, fast = timed(lambda: xattn_scores(images, captions, lengths, **options), repeats)
            t_eager, _ = timed(lambda: scores_within_budget(images, captions, lengths, ModelConfig(**options),
                                                            fused_kernel=False), repeats)
            t_bf16, low = timed(lambda: xattn_scores(images.bfloat16(), captions.bfloat16(), lengths, **options))
            error = (fast[:, subset] - ref).abs().max().item()
            print(f"[{name}] reference: {t_ref:.2f} s on {ref_captions} captions -> {t_ref_full:.1f} s "
                  f"scaled linearly to {n_cap}; xattn_scores fp32: {t_fast:.2f} s (eager path {t_eager:.2f} s); "
                  f"bf16: {t_bf16:.2f} s")
            print(f"[{name}] speed-up over reference: {t_ref_full / t_fast:.1f}x (target >= 5x); "
                  f"xattn / big matmul: {t_fast / t_matmul:.2f}x (target <= 1.3x; eager path "
                  f"{t_eager / t_matmul:.2f}x); fp32 / bf16 time: {t_fast / t_bf16:.2f}x; "
                  f"max |fast - reference| = {error:.2e}")
            fp32_recall, bf16_recall = recall_at(fast, per_image), recall_at(low.float(), per_image)
            print(f"[{name}] recall fp32: " + ", ".join(f"{k} {v:.1f}" for k, v in fp32_recall.items()))
            print(f"[{name}] recall bf16: " + ", ".join(f"{k} {v:.1f}" for k, v in bf16_recall.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 images x 500 captions, d=256")
    parser.add_argument("--ref-captions", type=int, default=50, help="captions the reference is timed on")
    parser.add_argument("--noise", type=float, default=6.0, help="word noise (sets how hard retrieval is)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each fp32 timing; the best counts")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.quick:
        run(100, 5, min(args.ref_captions, 50), 256, args.noise, args.repeats)
    else:
        run(1000, 5, args.ref_captions, 1024, args.noise, args.repeats)


if __name__ == "__main__":
    main()
