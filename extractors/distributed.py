"""Extraction on a Dask cluster: one task per shard, the detector built once per worker.

Workers write their shards straight into the store directory, so it must be on a filesystem
every worker sees (local disk for a LocalCluster, NFS or similar for a real cluster); the
client commits the manifest once all shards are in. Tasks carry only paths and settings.
"""
from __future__ import annotations

import multiprocessing
import uuid
import warnings
from dataclasses import replace
from types import TracebackType
from typing import Any, Iterator, Optional, Sequence

import dask
import torch
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker
from tqdm import tqdm

from extractors.config import ExtractorConfig
from extractors.detector import build_detector
from extractors.extract import DaskConfig, RunConfig, ShardResult, extract_shard
from extractors.plan import ShardJob
from pipeline.devices import resolve_device

PLUGIN_NAME = "scan-pipeline-detector"


class DetectorPlugin(WorkerPlugin):
    """Builds the detector when a worker starts (or joins), so every task on it reuses the model."""

    name = PLUGIN_NAME

    def __init__(self, config: ExtractorConfig, torch_threads: int = 0) -> None:
        self.config, self.torch_threads = config, torch_threads
        self.detector: Any = None

    def setup(self, worker: Any) -> None:
        # One intra-op thread per worker thread unless told otherwise: workers are the parallelism.
        torch.set_num_threads(self.torch_threads or worker.state.nthreads)
        self.detector = build_detector(self.config)


def uses_gpu(config: ExtractorConfig) -> bool:
    return resolve_device(config.device).type == "cuda"


def _run_shard_on_worker(job: ShardJob, config: ExtractorConfig, run: RunConfig) -> ShardResult:
    """Task body: extract one shard with the worker's detector."""
    detector = get_worker().plugins[PLUGIN_NAME].detector
    if run.num_workers and multiprocessing.current_process().daemon:
        warnings.warn("this Dask worker is a daemon process and cannot start DataLoader workers; decoding in the "
                      "task instead (start workers with distributed.worker.daemon=False to decode in parallel)")
        run = replace(run, num_workers=0)
    return extract_shard(job, detector, config, run)


class DaskRunner:
    """Context manager: connects to (or starts) a cluster, registers the detector plugin, runs shards.

    On GPU configs every task asks for `resources={"GPU": 1}`, so a worker started with
    `dask worker --resources GPU=1` (one per GPU, CUDA_VISIBLE_DEVICES set) runs one shard at a time.
    """

    def __init__(self, config: ExtractorConfig, run: RunConfig, dask_config: DaskConfig = DaskConfig(), *,
                 progress: bool = True) -> None:
        self.config, self.run_config, self.dask_config, self.progress = config, run, dask_config, progress
        self.resources = {"GPU": 1} if uses_gpu(config) else None
        self._cluster: Optional[LocalCluster] = None
        self._client: Optional[Client] = None

    def __enter__(self) -> "DaskRunner":
        if self.dask_config.scheduler_address:
            self._client = Client(self.dask_config.scheduler_address)
        else:
            # Non-daemon workers may start DataLoader processes for decoding.
            with dask.config.set({"distributed.worker.daemon": False}):
                self._cluster = LocalCluster(n_workers=self.dask_config.n_workers, threads_per_worker=1, processes=True,
                                             host=self.dask_config.host, dashboard_address=None,
                                             resources=self.resources)
            self._client = Client(self._cluster)
        self._client.register_plugin(DetectorPlugin(self.config, self.run_config.torch_threads), name=PLUGIN_NAME)
        return self

    @property
    def client(self) -> Client:
        assert self._client is not None, "DaskRunner used outside its with-block"
        return self._client

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client, self._cluster = None, None

    def run(self, jobs: Sequence[ShardJob]) -> Iterator[ShardResult]:
        """Submit one task per shard; yield results as shards finish (any order)."""
        run_id = uuid.uuid4().hex[:8]
        futures = [self.client.submit(_run_shard_on_worker, job, self.config, self.run_config, pure=False,
                                       key=f"extract-shard-{job.plan.index:05d}-{run_id}", resources=self.resources)
                   for job in jobs]
        try:
            with tqdm(total=len(futures), unit="shard", desc="extract (dask)", disable=not self.progress) as bar:
                for future in as_completed(futures):
                    result = future.result()
                    bar.update(1)
                    yield result
        finally:
            self.client.cancel(futures)
