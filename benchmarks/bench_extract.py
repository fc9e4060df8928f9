"""Extraction benchmarks, one stage at a time; each prints ratios against a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_extract.py --quick                      # every stage, small
    .venv/bin/python benchmarks/bench_extract.py --stage selection            # one stage

Stages (add one by writing `stage_<name>(args)` and listing it in STAGES):
  overhead   files -> store (decoding in DataLoader workers, HDF5 writes, manifest) against the bare
             detector forward on the same images already decoded. Target: overhead <= 10 %.
  speed      R101-C4-VG at 600/1000 px, 300 proposals, 36 boxes: today's float32 path against each faster
             setting on the same photos (interleaved, ratios per round), the quality of each against float32
             (boxes matched at IoU >= 0.9, feature cosine), and the per-stage time (benchmarks/extract_speed.py);
             ONNX Runtime (body + res5) is one of the settings; --int8 adds the opt-in res5 in int8
             (--int8-calibration).
  quality    bf16 autocast (or, --quality-setting int8, res5 in int8; perturbed, float32 with seeded relative
             noise on res5's output, a control of how fragile the selection is) against the float32 default,
             R101-C4-VG at the standard size on real photos (stand-in weights): boxes matched at IoU >= 0.9 and
             feature cosine, photo by photo (bf16 is emulated, and slow, on CPUs without bf16 instructions).
             Targets: >= 95 % matched, mean cosine >= 0.995.
  layout     the machine's cores as one process with all threads or as Dask workers with fewer each
             (benchmarks/extract_layout.py), files -> store, for each runtime (torch, onnxruntime).
  selection  caffe region selection (per-class NMS over 300 proposals x 1601 classes) against a
             numpy loop of Caffe's per-class `py_cpu_nms`, as generate_tsv.py runs it, on the same
             inputs; outputs must be identical. Target: >= 10x faster and <= 100 ms per image.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extractors.config import ExtractorConfig  # noqa: E402
from extractors.detector import build_detector  # noqa: E402
from extractors.extract import InProcessRunner, RunConfig, extract_dataset  # noqa: E402
from extractors.images import decode_image  # noqa: E402
from extractors.loader import ImageFile  # noqa: E402
from extractors.preprocess import collate_images, prepare_image  # noqa: E402
from extractors.selection import select_regions  # noqa: E402
from pipeline.store import StoreConfig  # noqa: E402
from benchmarks.extract_layout import add_arguments as add_layout_arguments  # noqa: E402
from benchmarks.extract_layout import stage_layout  # noqa: E402
from benchmarks.extract_speed import add_arguments as add_speed_arguments  # noqa: E402
from benchmarks.extract_speed import stage_quality, stage_speed  # noqa: E402
from tests.extractors.references import py_cpu_nms  # noqa: E402  (the loop the selection is timed against)

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flickr8k" / "images"


# ---------------------------------------------------------------- stage: overhead


def bare_forward_seconds(detector, config: ExtractorConfig, images: list[ImageFile]) -> float:
    """Seconds for the detector alone on pre-decoded, pre-collated batches (the baseline)."""
    prepared = [prepare_image(decode_image(image.path), config) for image in images]
    batches = [collate_images(prepared[start:start + config.batch_size])
               for start in range(0, len(prepared), config.batch_size)]
    started = time.perf_counter()
    for batch in batches:
        detector(batch)
    return time.perf_counter() - started


def end_to_end_seconds(detector, config: ExtractorConfig, images: list[ImageFile], workers: int,
                       shard_size: int) -> float:
    """Seconds for extract_dataset from image files to a committed store, in a fresh directory."""
    with tempfile.TemporaryDirectory() as store:
        runner = InProcessRunner(config, RunConfig(num_workers=workers), detector=detector, progress=False)
        started = time.perf_counter()
        summary = extract_dataset(images, store, config, store=StoreConfig(shard_size=shard_size),
                                  run=RunConfig(num_workers=workers), runner=runner, progress=False)
        seconds = time.perf_counter() - started
    assert summary.extracted == len(images), summary
    return seconds


def stage_overhead(args: argparse.Namespace) -> None:
    count, rounds = (8, 2) if args.quick else (32, 3)
    count, rounds = args.overhead_photos or count, args.overhead_rounds or rounds
    paths = sorted(PHOTOS.glob("*.jpg"))[:count]
    if len(paths) < count:
        raise SystemExit(f"need {count} photos in {PHOTOS.resolve()}")
    images = [ImageFile(path.stem, path, path.name) for path in paths]
    boxes = {"min_boxes": args.boxes, "max_boxes": args.boxes} if args.boxes else {}
    config = ExtractorConfig(backbone=args.backbone, device="cpu", batch_size=args.batch_size,
                             rpn_post_nms_topk=args.proposals, **boxes)
    detector = build_detector(config)
    detector(collate_images([prepare_image(decode_image(paths[0]), config)]))  # warm-up
    forward, total = [], []
    for _ in range(rounds):  # interleaved, so load from other processes hits both alike
        forward.append(bare_forward_seconds(detector, config, images))
        total.append(end_to_end_seconds(detector, config, images, args.workers, shard_size=4))
    print(f"[overhead] {args.backbone}, {args.proposals} proposals/image, {count} Flickr8k photos, "
          f"batch {args.batch_size}, {args.workers} decoding workers, {torch.get_num_threads()} torch threads, "
          f"best of {rounds} interleaved rounds")
    print(f"bare forward (pre-decoded): {count / min(forward):6.2f} images/s ({min(forward):.2f} s)")
    print(f"end to end (files->store):  {count / min(total):6.2f} images/s ({min(total):.2f} s)")
    print(f"overhead: {100 * (min(total) / min(forward) - 1):+.1f}% (target <= +10%)")


# ---------------------------------------------------------------- stage: selection


def numpy_loop_selection(boxes: np.ndarray, probs: np.ndarray, conf_thresh: float, nms_thresh: float,
                         min_boxes: int, max_boxes: int) -> np.ndarray:
    """generate_tsv.py lines 84-95: py_cpu_nms for each class 1..C, max kept score, threshold and clamp."""
    max_conf = np.zeros(len(boxes), dtype=np.float32)
    for cls in range(1, probs.shape[1]):
        keep = py_cpu_nms(boxes, probs[:, cls], nms_thresh)
        max_conf[keep] = np.maximum(max_conf[keep], probs[keep, cls])
    keep = np.where(max_conf >= conf_thresh)[0]
    by_confidence = np.argsort(-max_conf, kind="stable")
    if len(keep) < min_boxes:
        return by_confidence[:min_boxes]
    return by_confidence[:max_boxes] if len(keep) > max_boxes else keep


def selection_inputs(rng: np.random.Generator, kind: str, regions: int = 300,
                     classes: int = 1601) -> tuple[np.ndarray, np.ndarray]:
    """RPN-like boxes (clustered over a 800x600 image, original pixels) and softmax class scores.

    detector-like: background or one to three classes dominate each proposal, as with trained
    weights; flat: no class stands out (a random-init detector), the worst case for selection.
    """
    centres = rng.uniform([0, 0], [800, 600], (40, 2))[rng.integers(0, 40, regions)] + rng.normal(0, 40, (regions, 2))
    sizes = rng.uniform(16, 400, (regions, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).clip(0, [799, 599, 799, 599])
    logits = rng.normal(0, 1, (regions, classes))
    if kind == "detector-like":
        logits[rng.random(regions) < 0.4, 0] += 6
        for row in range(regions):
            picked = rng.integers(1, classes, rng.integers(1, 4))
            logits[row, picked] += rng.uniform(3, 9, len(picked))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return boxes.astype(np.float32), (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def _best_of(function: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Best wall and CPU (process) seconds over `repeats` calls, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def stage_selection(args: argparse.Namespace) -> None:
    images, settings = (1 if args.quick else 3), dict(conf_thresh=0.2, nms_thresh=0.3, min_boxes=10, max_boxes=100)
    print(f"[selection] 300 proposals x 1601 classes, conf 0.2, NMS 0.3, 10-100 boxes, {images} image(s) per kind; "
          "ours best of 5 (wall and CPU time; it runs on one intra-op thread), the numpy loop once per image")
    for kind in ("detector-like", "flat"):
        rng = np.random.default_rng(0)
        inputs = [selection_inputs(rng, kind) for _ in range(images)]
        loops, expected = zip(*(_best_of(lambda b=b, p=p: numpy_loop_selection(b, p, **settings), 1)[::2]
                                for b, p in inputs))
        timings = [_best_of(lambda b=b, p=p: select_regions(torch.from_numpy(b), torch.from_numpy(p), **settings), 5)
                   for b, p in inputs]
        if any(not np.array_equal(keep.numpy(), reference) for (_, _, keep), reference in zip(timings, expected)):
            raise SystemExit(f"{kind}: selection differs from the numpy loop")
        ratio = min(loop / wall for loop, (wall, _, _) in zip(loops, timings))
        print(f"{kind:>13}: ours {1000 * max(wall for wall, _, _ in timings):6.1f} ms wall "
              f"({1000 * max(cpu for _, cpu, _ in timings):5.1f} ms CPU), numpy loop {1000 * max(loops):6.0f} ms, "
              f"ratio {ratio:5.1f}x on the worst image, identical output")
    print("targets: >= 10x the numpy loop, <= 100 ms per image")


STAGES: dict[str, Callable[[argparse.Namespace], None]] = {"overhead": stage_overhead, "selection": stage_selection,
                                                           "speed": stage_speed, "quality": stage_quality,
                                                           "layout": stage_layout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", action="append", choices=sorted(STAGES),
                        help="Run this stage (repeatable); default all.")
    parser.add_argument("--quick", action="store_true", help="Small sizes: a few minutes on 2 CPU cores.")
    parser.add_argument("--backbone", default="R18-C4", help="overhead: backbone preset (random init).")
    parser.add_argument("--proposals", type=int, default=30,
                        help="overhead: RPN proposals per image (the preset's 300 make one R18 image take ~20 s "
                             "on 2 cores).")
    parser.add_argument("--workers", type=int, default=2, help="overhead: DataLoader decoding processes.")
    parser.add_argument("--batch-size", type=int, default=4, help="overhead: images per forward pass.")
    parser.add_argument("--overhead-photos", type=int, default=0,
                        help="overhead: Flickr8k photos (default 32; quick 8).")
    parser.add_argument("--overhead-rounds", type=int, default=0,
                        help="overhead: interleaved rounds (default 3; quick 2).")
    parser.add_argument("--boxes", type=int, default=0,
                        help="overhead: regions per image (min = max); default the preset's.")
    add_speed_arguments(parser)
    add_layout_arguments(parser)
    args = parser.parse_args()
    for name in args.stage or list(STAGES):
        STAGES[name](args)


if __name__ == "__main__":
    main()
