"""Feature-store benchmark: random-batch read rate against an in-memory array, and peak RSS of
a training-style sweep over a synthetic COCO-scale store (113,287 images x 36 x 2048 float16).

    .venv/bin/python benchmarks/bench_store.py            # full size, ~17 GB written then deleted
    .venv/bin/python benchmarks/bench_store.py --quick    # 3,000 images, seconds

Ratios compare numbers measured in the same run on the same machine.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.store import StoreReader, RegionRecord, ShardWriter, StoreInfo, commit_manifest, init_store  # noqa: E402
from pipeline.store.layout import completed_shards  # noqa: E402

COCO_TRAIN_IMAGES = 113_287
BOXES, DIM = 36, 2048


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=COCO_TRAIN_IMAGES, help="Images in the synthetic store.")
    parser.add_argument("--quick", action="store_true", help="Small store (3,000 images) for a fast check.")
    parser.add_argument("--shard-size", type=int, default=1000, help="Images per shard.")
    parser.add_argument("--batch-size", type=int, default=128, help="Images per random batch (SCAN: 128).")
    parser.add_argument("--batches", type=int, default=100, help="Random batches timed for the read-rate ratio.")
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the store (default: a temp dir).")
    parser.add_argument("--keep", action="store_true", help="Do not delete the store afterwards.")
    args = parser.parse_args()
    if args.quick:
        args.images = 3000
    return args


def check_disk(folder: Path, images: int) -> None:
    needed = images * BOXES * DIM * 2 * 1.05 + (1 << 30)
    free = shutil.disk_usage(folder).free
    if free < needed:
        sys.exit(f"refusing: {folder} has {free / 2**30:.1f} GiB free, the store needs {needed / 2**30:.1f} GiB "
                 "(use --images N or --quick, or --dir elsewhere)")


def drop_from_page_cache(path: Path) -> None:
    """Evict our own file from the page cache, so reads measure the disk, not RAM."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_synthetic_store(store_dir: Path, images: int, shard_size: int) -> float:
    """Random non-negative features (like ReLU'd pool5), generated per shard; returns seconds."""
    start = time.perf_counter()
    init_store(store_dir, StoreInfo(feature_dim=DIM, max_boxes=BOXES, extractor={"synthetic": True}))
    rng = np.random.default_rng(0)
    zeros_i, zeros_f, boxes = np.zeros(BOXES, np.int64), np.zeros(BOXES, np.float32), np.zeros((BOXES, 4), np.float32)
    for index, first in enumerate(range(0, images, shard_size)):
        count = min(shard_size, images - first)
        block = rng.random((count, BOXES, DIM), dtype=np.float32)
        block *= 4
        with ShardWriter.for_store(store_dir, index) as writer:
            for row in range(count):
                writer.append(RegionRecord(f"{first + row}", block[row], boxes, zeros_i, zeros_f, zeros_i, zeros_f,
                                           (480, 640)))
        drop_from_page_cache(completed_shards(store_dir)[index])
        print(f"\rwrote {first + count}/{images} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    commit_manifest(store_dir)
    return time.perf_counter() - start


def read_rate(store_dir: Path, batch_size: int, batches: int) -> dict[str, float]:
    """Images/s for the same random batches from the store and from an in-memory float16 array.

    The in-memory baseline holds the first shard-sized slice of the store (it cannot hold 17 GB),
    and the store reads are restricted to the same images, so both serve identical batches.
    """
    store = StoreReader(store_dir)
    pool = min(len(store), 4000)
    in_memory = np.concatenate([store.read(np.arange(s, min(s + 500, pool)))[0].astype(np.float16)
                                for s in range(0, pool, 500)])
    rng = np.random.default_rng(1)
    plans = [rng.integers(0, pool, size=batch_size) for _ in range(batches)]
    start = time.perf_counter()
    for indices in plans:
        in_memory[np.sort(indices)].astype(np.float32)
    memory_rate = batches * batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    for indices in plans:
        store.read(indices)
    store_rate = batches * batch_size / (time.perf_counter() - start)
    return {"memory_images_per_s": memory_rate, "store_images_per_s": store_rate,
            "store_over_memory": store_rate / memory_rate}


def peak_rss_kib() -> int:
    """VmHWM of this process's own address space (ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def sweep(store_dir: str, batch_size: int, queue: multiprocessing.Queue) -> None:
    """One training epoch of random batches over the whole store, in a fresh process (clean RSS)."""
    store = StoreReader(store_dir)
    order = np.random.default_rng(2).permutation(len(store))
    start = time.perf_counter()
    for first in range(0, len(order), batch_size):
        store.read(order[first:first + batch_size])
    seconds = time.perf_counter() - start
    peak_mib = peak_rss_kib() / 1024
    queue.put({"sweep_images": len(order), "sweep_seconds": seconds, "sweep_images_per_s": len(order) / seconds,
               "sweep_peak_rss_mib": peak_mib})


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.dir))
    check_disk(root, args.images)
    store_dir = root / "store"
    try:
        write_seconds = write_synthetic_store(store_dir, args.images, args.shard_size)
        results: dict[str, float] = {"images": args.images, "write_seconds": write_seconds}
        results["store_gib"] = sum(p.stat().st_size for p in (store_dir / "shards").iterdir()) / 2**30
        for path in completed_shards(store_dir).values():
            drop_from_page_cache(path)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        child = context.Process(target=sweep, args=(str(store_dir), args.batch_size, queue))
        child.start()
        results.update(queue.get())
        child.join()
        results.update(read_rate(store_dir, args.batch_size, args.batches))
        results["sweep_peak_rss_under_2gib"] = results["sweep_peak_rss_mib"] < 2048
        print(json.dumps(results, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
