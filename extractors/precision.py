"""Which reduced precision the detector runs in, and whether this machine runs it natively.

bf16 only pays on CPUs with bf16 instructions (AVX-512 BF16, AMX); elsewhere oneDNN emulates it,
measured about 30x slower than float32 on an AVX2 CPU (README, "Extraction speed"). So `auto`
picks bf16 only where it is native and float32 otherwise, and the choice is resolved once, when the
config is made: the store records what actually ran, so a bf16 store never mixes with a float32 one.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Iterable, Optional

import torch

# /proc/cpuinfo flags of CPUs whose oneDNN kernels compute bf16 in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
AMP_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is absent: no bf16 assumed)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16(flags: Optional[Iterable[str]] = None) -> bool:
    """True when this CPU (or the given flags) has bf16 instructions that oneDNN uses."""
    present = cpu_flags() if flags is None else frozenset(flags)
    return any(flag in present for flag in NATIVE_BF16_FLAGS)


def resolve_amp_dtype(requested: str, device: torch.device, flags: Optional[Iterable[str]] = None) -> str:
    """'' (float32), 'fp16' or 'bf16' for `device`; `auto` picks bf16 where it is native, else float32.

    fp16 autocast is CUDA-only here (CPUs without AVX-512 FP16 run it far slower than float32);
    an explicit bf16 on a CPU without bf16 instructions runs, correctly but slowly, with a warning.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else ""
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16(flags) else ""
    if requested == "fp16" and device.type != "cuda":
        raise ValueError(f"amp_dtype='fp16' needs a CUDA device (device={device}); on a CPU use bf16 or auto")
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16(flags):
        log.warning("amp_dtype='bf16' on a CPU without %s: oneDNN emulates it, far slower than float32 "
                    "(use auto or '' for speed)", " / ".join(NATIVE_BF16_FLAGS))
    return requested


def autocast(amp_dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to `amp_dtype` on `device`; float32 ('') is no autocast at all, the plain float32 path."""
    if not amp_dtype:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_TORCH_DTYPES[amp_dtype])
