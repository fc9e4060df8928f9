"""Search service under load: C concurrent clients for S seconds on loopback against `python -m models serve --demo`.

The server runs as its own process (as a user starts it) on the demo model of workspace W; each client
(httpx, async) cycles through the endpoints with test-split captions and image ids: text -> images
(two-stage, k=10), image -> captions (two-stage, k=10), attention of a (test image, its caption) pair,
the image file, healthz. Prints p50/p95 per endpoint, the request rate, non-2xx answers, the server's
RSS once loaded, after a 5-s warm-up at the same concurrency and six times during the load, whether it is
still up, and whether any file under W changed (sha256 + mtime of every file before and after: the service
must never write).

    .venv/bin/python benchmarks/bench_serve.py --workspace workspace [--clients 20 --seconds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow.parquet as pq

from models.service.demo import demo_files

ROOT = Path(__file__).resolve().parents[1]
WARM_UP_S = 5


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workspace: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "SCAN_WORKSPACE": str(workspace), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "models", "serve", "--demo", "--port", str(port)], env=env,
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("server did not answer /healthz within 300 s")


def requests_of(captions: Path) -> list[tuple[str, str, dict]]:
    """(endpoint label, path, params) cycled through by every client: test captions and their images."""
    table = pq.read_table(captions, columns=["image_id", "split", "raw"]).to_pydict()
    test = [(i, raw) for i, split, raw in zip(table["image_id"], table["split"], table["raw"]) if split == "test"][:50]
    cycle = []
    for image_id, caption in test:
        cycle += [("search text", "/api/search", {"text": caption, "k": 10}),
                  ("search image", "/api/search", {"image": image_id, "k": 10}),
                  ("attention", "/api/attention", {"image": image_id, "text": caption}),
                  ("image file", f"/api/images/{image_id}", {}), ("healthz", "/healthz", {})]
    return cycle


async def client(base: str, cycle: list, offset: int, stop: float, times: dict, failures: list) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        step = offset
        while time.monotonic() < stop:
            label, path, params = cycle[step % len(cycle)]
            start = time.perf_counter()
            response = await http.get(path, params=params)
            times.setdefault(label, []).append(time.perf_counter() - start)
            if response.status_code >= 300:
                failures.append((label, response.status_code, response.text[:200]))
            step += 1


async def sample_rss(process: psutil.Process, stop: float, every: float, samples: list) -> None:
    while time.monotonic() < stop:
        await asyncio.sleep(min(every, max(stop - time.monotonic(), 0)))
        samples.append(process.memory_info().rss / 2**20)


async def load(base: str, cycle: list, clients: int, seconds: float,
               process: psutil.Process) -> tuple[dict, list, float, list]:
    times, failures, rss = {}, [], []
    start = time.monotonic()
    await asyncio.gather(sample_rss(process, start + seconds, seconds / 6, rss),
                         *(client(base, cycle, 7 * i, start + seconds, times, failures) for i in range(clients)))
    return times, failures, time.monotonic() - start, rss


def report(times: dict, failures: list, elapsed: float, rss: list[float], up: bool, unchanged: bool) -> str:
    lines = ["| endpoint | requests | p50 ms | p95 ms |", "|---|---:|---:|---:|"]
    for label, values in times.items():
        ms = np.asarray(values) * 1000
        lines.append(f"| {label} | {len(ms)} | {np.percentile(ms, 50):.0f} | {np.percentile(ms, 95):.0f} |")
    total = sum(len(v) for v in times.values())
    lines += ["", f"{total} requests in {elapsed:.1f} s ({total / elapsed:.1f}/s), {len(failures)} non-2xx",
              f"server RSS (MB): loaded {rss[0]:.0f}, after the warm-up {rss[1]:.0f}, during the load "
              f"{' '.join(f'{value:.0f}' for value in rss[2:])}; still up: {up}",
              f"files under the workspace unchanged: {unchanged}"]
    return "\n".join(lines + [f"  {f}" for f in failures[:5]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path(os.environ.get("SCAN_WORKSPACE", "workspace")))
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    workspace = args.workspace.resolve()
    cycle = requests_of(demo_files(workspace).captions)
    before = tree_state(workspace)
    port = free_port()
    server = start_server(workspace, port)
    try:
        base = f"http://127.0.0.1:{port}"
        process = psutil.Process(server.pid)
        rss = [process.memory_info().rss / 2**20]
        asyncio.run(load(base, cycle, args.clients, WARM_UP_S, process))  # every worker thread has run once
        rss.append(process.memory_info().rss / 2**20)
        times, failures, elapsed, during = asyncio.run(load(base, cycle, args.clients, args.seconds, process))
        up = httpx.get(base + "/healthz", timeout=30).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.clients} clients x {args.seconds:.0f} s on loopback, demo model of {workspace}")
    print(report(times, failures, elapsed, rss + during, up, tree_state(workspace) == before))


if __name__ == "__main__":
    main()
