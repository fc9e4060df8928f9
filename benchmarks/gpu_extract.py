"""Detector throughput (images/s) at batch 1, 8 and 32 in float32, bf16 and fp16, and each reduced precision's
quality against float32 on the same photos, in one command (a few minutes of GPU time).

    .venv/bin/python benchmarks/gpu_extract.py                        # R101-C4-VG on CUDA, 600/1000 px, 36 boxes
    .venv/bin/python benchmarks/gpu_extract.py --weights FILE         # the published weights instead of the stand-in
    .venv/bin/python benchmarks/gpu_extract.py --device cpu --quick   # R18-C4-demo, 96 px, batch 1 and 2 (a check)

Weights: the stand-in (extractors.standin: the published layout, seeded, calibrated on one real photo so that
activations and class scores look trained) unless --weights. Photos: ../shared/data f30k_mini, then Flickr8k,
or --images DIR.
Ratios are against float32 at batch 1 measured in the same run. Quality: the regions of the largest batch
in each reduced precision against float32's (boxes matched at IoU >= 0.9, feature cosine).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.extract_speed import PHOTO_DIRS, photos, standin_state  # noqa: E402
from extractors.backbone import fuse_norms  # noqa: E402
from extractors.config import ExtractorConfig  # noqa: E402
from extractors.detector import BottomUpDetector, build_detector  # noqa: E402
from extractors.images import decode_image  # noqa: E402
from extractors.preprocess import ImageBatch, collate_images, prepare_image  # noqa: E402
from extractors.quality import compare_runs  # noqa: E402

PRECISIONS = {"": "fp32", "bf16": "bf16", "fp16": "fp16"}


def images_per_second(detector: BottomUpDetector, batch: ImageBatch, repeats: int) -> tuple[float, list]:
    """Images/s over `repeats` forwards after one warm-up (cuDNN autotuning, allocator); and the outputs."""
    outputs = detector(batch)
    started = time.perf_counter()
    for _ in range(repeats):
        detector(batch)  # returns numpy, so each call ends synchronised
    return len(outputs) * repeats / (time.perf_counter() - started), outputs


def detector_in(base: ExtractorConfig, amp_dtype: str, state: dict | None) -> BottomUpDetector:
    """The detector in `amp_dtype`: the stand-in `state`, or (None) the weights file of `base`."""
    config = dataclasses.replace(base, amp_dtype=amp_dtype)
    if state is None:
        return build_detector(config)
    detector = BottomUpDetector(config)
    detector.load_state_dict(state)
    return fuse_norms(detector).to(base.device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="R18-C4-demo at 96 px, batches 1 and 2 (a CPU smoke run).")
    parser.add_argument("--weights", default="", help="Published weights (.pkl / .pth) instead of the stand-in.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", default="", help="A folder of .jpg photos (33 for the full run) instead of "
                                                      "../shared/data (absent on a bare GPU machine: copy some there).")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    if args.quick:
        base = ExtractorConfig(backbone="R18-C4-demo", device=args.device, rpn_post_nms_topk=20, min_boxes=5,
                               max_boxes=10, test_short_side=96, test_max_side=120, weights=args.weights)
        batch_sizes = [1, 2]
    else:
        base = ExtractorConfig(backbone="R101-C4-VG", device=args.device, min_boxes=36, max_boxes=36,
                               weights=args.weights)
        batch_sizes = [1, 8, 32]
    device = torch.device(args.device)
    paths = photos(max(batch_sizes) + 1, (Path(args.images),) if args.images else PHOTO_DIRS)
    state = None if args.weights else standin_state(base, paths[0])
    prepared = [prepare_image(decode_image(path), base) for path in paths[1:]]
    print(f"backbone={base.backbone} device={device} size={base.test_short_side}/{base.test_max_side} "
          f"proposals={base.rpn_post_nms_topk} boxes={base.min_boxes}-{base.max_boxes} "
          f"weights={args.weights or 'stand-in'} photos={len(prepared)}", flush=True)
    baseline, reference = None, None
    for amp_dtype, label in PRECISIONS.items():
        if amp_dtype == "fp16" and device.type != "cuda":
            print(f"{label}: skipped (autocast fp16 is for CUDA devices)")
            continue
        detector = detector_in(base, amp_dtype, state)
        rates = []
        for batch_size in batch_sizes:
            rate, outputs = images_per_second(detector, collate_images(prepared[:batch_size]), args.repeats)
            baseline = baseline or rate
            rates.append(f"batch {batch_size:>2}: {rate:8.2f} images/s ({rate / baseline:5.2f}x)")
        reference = reference or outputs
        quality = "reference" if not amp_dtype else str(compare_runs(reference, outputs))
        print(f"{label}: {'  '.join(rates)}  | {quality}", flush=True)
        del detector
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
