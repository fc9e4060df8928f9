"""Detector throughput (images/s) at batch 1, 8 and 32, with ratios against batch 1 measured
in the same run (so the ratios, not the absolute numbers, carry across machines).

    .venv/bin/python benchmarks/gpu_extract.py                       # R101-C4-VG on CUDA, 600/1000 px
    .venv/bin/python benchmarks/gpu_extract.py --amp fp16             # autocast
    .venv/bin/python benchmarks/gpu_extract.py --device cpu --quick   # tiny R18 run to check the script

Uses the real BUTD demo photos from ../shared/data when present; random-init weights unless
--weights is given (speed does not depend on the weight values, only region selection does).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.preprocess import collate_images, prepare_image

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "butd_demo_images"


def load_photos(count: int) -> list[np.ndarray]:
    """`count` RGB photos cycling over the demo images (seeded noise if they are absent)."""
    paths = sorted(PHOTOS.glob("*.jpg"))
    if not paths:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(count)]
    return [np.asarray(Image.open(paths[i % len(paths)]).convert("RGB")) for i in range(count)]


def images_per_second(detector, config: ExtractorConfig, photos: list[np.ndarray], batch_size: int, repeats: int) -> float:
    prepared = [prepare_image(photo, config) for photo in photos[:batch_size]]
    batch = collate_images(prepared)
    detector(batch)  # warm-up: cuDNN autotuning, allocator
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        detector(batch)  # returns numpy, so each call ends synchronised
    return batch_size * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="R18-C4-demo at 128 px, batches 1 and 2 (a CPU smoke run).")
    parser.add_argument("--amp", default="", choices=["", "fp16", "bf16"])
    parser.add_argument("--weights", default="", help="Optional published weights (.pkl / .pth).")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    if args.quick:
        config = ExtractorConfig(backbone="R18-C4-demo", device=args.device, rpn_post_nms_topk=50)
        batch_sizes = [1, 2]
    else:
        config = ExtractorConfig(backbone="R101-C4-VG", device=args.device, amp_dtype=args.amp, weights=args.weights)
        batch_sizes = [1, 8, 32]
    detector = build_detector(config)
    photos = load_photos(max(batch_sizes))
    print(f"backbone={config.backbone} device={detector.device} amp={config.amp_dtype or 'fp32'} "
          f"size={config.test_short_side}/{config.test_max_side} proposals={config.rpn_post_nms_topk}")
    baseline = None
    for batch_size in batch_sizes:
        rate = images_per_second(detector, config, photos, batch_size, args.repeats)
        baseline = baseline or rate
        print(f"batch {batch_size:>3}: {rate:8.2f} images/s  ({rate / baseline:.2f} x batch 1)")
    if detector.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
