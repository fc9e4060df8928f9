"""Seconds per named stage (wall and process CPU), so a benchmark shows where extraction time goes.

CPU time counts every thread of this process: on a machine shared with other jobs it moves less
than wall time does. On CUDA each stage ends with a synchronize, so kernels are charged to the
stage that launched them (only when a clock is given: normal runs never synchronize for it).
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator, Optional

import torch


class StageClock:
    """Accumulates wall and CPU seconds per stage name over any number of `with clock.stage(name)` blocks."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.device = device
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += time.process_time() - cpu


@contextlib.contextmanager
def maybe_stage(clock: Optional[StageClock], name: str) -> Iterator[None]:
    """`clock.stage(name)`, or nothing without a clock."""
    if clock is None:
        yield
    else:
        with clock.stage(name):
            yield
