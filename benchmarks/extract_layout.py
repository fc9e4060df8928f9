"""Stage `layout` of bench_extract.py: the same cores as one process with many intra-op threads, or as
several Dask worker processes with fewer threads each, files -> store, for each runtime.

R101-C4-VG at the standard size with the stand-in weights of the speed stage, written as a MILVLG .pth so
that Dask workers load them the way a user's run would. Every layout extracts the same photos into a fresh
store, one shard per process; one-time costs (starting workers, loading weights, the ONNX export, the
first call's oneDNN setup) are paid in an untimed warm-up and printed apart. Rounds are interleaved.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from distributed import Worker

from benchmarks.extract_speed import photos, standin_state
from extractors.config import ExtractorConfig
from extractors.detector import BottomUpDetector, build_detector
from extractors.distributed import PLUGIN_NAME, DaskRunner
from extractors.extract import DaskConfig, InProcessRunner, RunConfig, extract_dataset
from extractors.images import decode_image
from extractors.layouts import to_published
from extractors.loader import ImageFile
from extractors.preprocess import collate_images, prepare_image
from pipeline.store import StoreConfig


@dataclass(frozen=True)
class Layout:
    """`processes` Dask workers (1: this process, no Dask) with `threads` intra-op threads each."""

    processes: int
    threads: int
    runtime: str

    @property
    def name(self) -> str:
        where = "1 process (no Dask)" if self.processes == 1 else f"{self.processes} Dask workers"
        return f"{where} x {self.threads} threads, {self.runtime}"


def layouts(cores: int, runtimes: tuple[str, ...]) -> list[Layout]:
    """Every split of `cores` into processes x threads, for each runtime."""
    splits = [(processes, cores // processes) for processes in range(1, cores + 1) if cores % processes == 0]
    return [Layout(processes, threads, runtime) for runtime in runtimes for processes, threads in splits]


def _warm_up_worker(photo: str, dask_worker: Worker) -> None:
    """Client.run body (Dask passes the worker as `dask_worker`): one call of the worker's detector."""
    detector = dask_worker.plugins[PLUGIN_NAME].detector
    detector(collate_images([prepare_image(decode_image(Path(photo)), detector.config)]))


class RunningLayout:
    """The runner of one layout, started and warmed up once, reused every round."""

    def __init__(self, layout: Layout, config: ExtractorConfig, warm_up_photo: Path, stack: ExitStack) -> None:
        self.layout = layout
        self.config = dataclasses.replace(config, runtime=layout.runtime)
        self.run = RunConfig(num_workers=1 if layout.processes == 1 else 0, torch_threads=layout.threads)
        started = time.perf_counter()
        if layout.processes == 1:
            torch.set_num_threads(layout.threads)
            detector: BottomUpDetector = build_detector(self.config)
            detector(collate_images([prepare_image(decode_image(warm_up_photo), self.config)]))
            self.runner = InProcessRunner(self.config, self.run, detector=detector, progress=False)
        else:
            self.runner = stack.enter_context(DaskRunner(self.config, self.run, DaskConfig(n_workers=layout.processes),
                                                         progress=False))
            self.runner.client.run(_warm_up_worker, str(warm_up_photo))
        self.setup_seconds = time.perf_counter() - started

    def seconds(self, images: list[ImageFile]) -> float:
        """Wall seconds to extract `images` into a fresh store, one shard per process."""
        shard_size = math.ceil(len(images) / self.layout.processes)
        with tempfile.TemporaryDirectory() as store:
            started = time.perf_counter()
            summary = extract_dataset(images, store, self.config, store=StoreConfig(shard_size=shard_size),
                                      run=self.run, runner=self.runner, progress=False)
            seconds = time.perf_counter() - started
        assert summary.extracted == len(images) and not summary.failed, summary
        return seconds


def stage_layout(args: argparse.Namespace) -> None:
    cores = args.layout_cores or os.cpu_count() or 1
    paths = photos((2 if args.quick else args.layout_photos) + 1)
    base = ExtractorConfig(backbone=args.speed_backbone, device="cpu", min_boxes=36, max_boxes=36)
    state = standin_state(base, paths[0])
    images = [ImageFile(path.stem, path, path.name) for path in paths[1:]]
    chosen = layouts(cores, tuple(args.layout_runtimes.split(",")))
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        weights = Path(folder) / "standin-milvlg.pth"
        torch.save({"model": to_published(state, "milvlg", base.spec)}, weights)
        config = dataclasses.replace(base, weights=str(weights), weights_format="milvlg")
        print(f"[layout] {base.backbone} stand-in weights, {base.test_short_side}/{base.test_max_side} px, "
              f"{len(images)} photos, {cores} cores, {args.layout_rounds} interleaved round(s), "
              f"CPU {torch.backends.cpu.get_cpu_capability()}", flush=True)
        running = []
        for layout in chosen:
            running.append(RunningLayout(layout, config, paths[0], stack))
            print(f"  started and warmed up {layout.name} in {running[-1].setup_seconds:.1f} s", flush=True)
        walls = np.zeros((args.layout_rounds, len(chosen)))
        for round_index in range(args.layout_rounds):
            for index, layout in enumerate(running):
                walls[round_index, index] = layout.seconds(images)
                print(f"  round {round_index + 1} {layout.layout.name}: {walls[round_index, index]:.1f} s", flush=True)
    print(f"\n{'layout':<48} {'images/s':>9} {'x first layout':>15}  (best round; ratios per round)")
    for index, layout in enumerate(chosen):
        ratios = walls[:, 0] / walls[:, index]
        spread = f"{ratios.min():.2f}-{ratios.max():.2f}" if args.layout_rounds > 1 else f"{ratios[0]:.2f}"
        print(f"{layout.name:<48} {len(images) / walls[:, index].min():9.3f} {spread:>15}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout-cores", type=int, default=0, help="layout: cores to split (0: all of them).")
    parser.add_argument("--layout-photos", type=int, default=4, help="layout: photos per run (f30k_mini, Flickr8k).")
    parser.add_argument("--layout-rounds", type=int, default=1, help="layout: interleaved rounds.")
    parser.add_argument("--layout-runtimes", default="torch,onnxruntime",
                        help="layout: comma-separated runtimes (torch, onnxruntime).")
