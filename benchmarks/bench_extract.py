"""Extraction overhead: files -> store (decoding in DataLoader workers, HDF5 writes, manifest)
against the bare detector forward on the same images already decoded, prepared and batched.

Both are measured in the same run on the same machine, so the ratio holds across machines:
    .venv/bin/python benchmarks/bench_extract.py --quick
Target: end-to-end time <= 1.10 x the bare forward time (overhead <= 10%).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import InProcessRunner, RunConfig, extract_dataset
from extractors.images import decode_image
from extractors.loader import ImageFile
from extractors.preprocess import collate_images, prepare_image
from pipeline.store import StoreConfig

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flickr8k" / "images"


def bare_forward_seconds(detector, config: ExtractorConfig, images: list[ImageFile]) -> float:
    """Seconds for the detector alone on pre-decoded, pre-collated batches (the baseline)."""
    prepared = [prepare_image(decode_image(image.path), config) for image in images]
    batches = [collate_images(prepared[start:start + config.batch_size]) for start in range(0, len(prepared), config.batch_size)]
    started = time.perf_counter()
    for batch in batches:
        detector(batch)
    return time.perf_counter() - started


def end_to_end_seconds(detector, config: ExtractorConfig, images: list[ImageFile], workers: int, shard_size: int) -> float:
    """Seconds for extract_dataset from image files to a committed store, in a fresh directory."""
    with tempfile.TemporaryDirectory() as store:
        runner = InProcessRunner(config, RunConfig(num_workers=workers), detector=detector, progress=False)
        started = time.perf_counter()
        summary = extract_dataset(images, store, config, store=StoreConfig(shard_size=shard_size),
                                  run=RunConfig(num_workers=workers), runner=runner, progress=False)
        seconds = time.perf_counter() - started
    assert summary.extracted == len(images), summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 images, 2 rounds (a few minutes on 2 CPU cores).")
    parser.add_argument("--backbone", default="R18-C4", help="Backbone preset (random init).")
    parser.add_argument("--proposals", type=int, default=30,
                        help="RPN proposals per image (the preset's 300 make one R18 image take ~20 s on 2 cores).")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader decoding processes.")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    count, rounds = (8, 2) if args.quick else (32, 3)
    paths = sorted(PHOTOS.glob("*.jpg"))[:count]
    if len(paths) < count:
        raise SystemExit(f"need {count} photos in {PHOTOS.resolve()}")
    images = [ImageFile(path.stem, path, path.name) for path in paths]
    config = ExtractorConfig(backbone=args.backbone, device="cpu", batch_size=args.batch_size,
                                        rpn_post_nms_topk=args.proposals)
    detector = build_detector(config)
    detector(collate_images([prepare_image(decode_image(paths[0]), config)]))  # warm-up
    forward, total = [], []
    for _ in range(rounds):  # interleaved, so load from other processes hits both alike
        forward.append(bare_forward_seconds(detector, config, images))
        total.append(end_to_end_seconds(detector, config, images, args.workers, shard_size=4))
    print(f"{args.backbone}, {args.proposals} proposals/image, {count} Flickr8k photos, batch {args.batch_size}, "
          f"{args.workers} decoding workers, {torch.get_num_threads()} torch threads, best of {rounds} interleaved rounds")
    print(f"bare forward (pre-decoded): {count / min(forward):6.2f} images/s ({min(forward):.2f} s)")
    print(f"end to end (files->store):  {count / min(total):6.2f} images/s ({min(total):.2f} s)")
    print(f"overhead: {100 * (min(total) / min(forward) - 1):+.1f}% (target <= +10%)")


if __name__ == "__main__":
    main()
