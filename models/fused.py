"""The fused C++ kernel behind large CPU inference scoring: built once per machine, eager fallback.

After each block matmul, ``models.scan`` runs about fifteen elementwise PyTorch passes over the
block (normalisation, softmax, context norms, aggregation). They cost a quarter to a half of
the matmul itself on a CPU. ``kernels/xattn_block.cpp`` computes the same quantities in one pass
per (image, caption) pair with every intermediate in registers, which brings scoring close to
the cost of the matmul alone. Both directions vectorise over an image's regions: the regions a
word attends to (t2i), and the regions that attend to a caption's words (i2t).

It is compiled with ``torch.utils.cpp_extension`` on first use (a C++ compiler and ninja, about
ten seconds) into the torch extensions cache (``TORCH_EXTENSIONS_DIR``, by default
~/.cache/torch_extensions), keyed by CPU so a ``-march=native`` build never runs on another kind
of processor. Where it cannot be built, scoring continues in eager PyTorch and logs why, once.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path

import torch
from torch import Tensor

from models.config import AGG_FUNCS, RAW_FEATURE_NORMS, ModelConfig

SOURCE = Path(__file__).with_name("kernels") / "xattn_block.cpp"
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp")  # fast-math: vector exp; not linked
LANES = 16           # the kernel pads each pair's regions to a multiple of this
MAX_REGIONS = 128    # regions per image the kernel handles

_log = logging.getLogger(__name__)


def padded_gram(gram: Tensor) -> Tensor:
    """(n, R, R) region Gram matrices with zero columns up to a multiple of LANES, as t2i reads them."""
    return torch.nn.functional.pad(gram, (0, -gram.shape[-1] % LANES)).contiguous()


def handles(n_regions: int) -> bool:
    """Whether the kernel takes images with this many regions."""
    return 1 <= n_regions <= MAX_REGIONS


def text_to_image(sim: Tensor, image_gram: Tensor, word_sq: Tensor, region_mask: Tensor | None,
                  options: ModelConfig) -> Tensor:
    """t2i scores (n_cap, n_img) of a block.

    sim (n_cap, L, n_img, R): word-region similarities; image_gram (n_img, R, Rp) from
    ``padded_gram``; word_sq (n_cap, L) squared word norms; region_mask (n_img, R) True on real
    regions. Call ``available()`` first.
    """
    return _loaded().contexts_in_lanes(sim, image_gram, word_sq, region_mask, *_option_args(options))


def image_to_text(sim: Tensor, caption_gram: Tensor, region_sq: Tensor, region_mask: Tensor | None,
                  options: ModelConfig) -> Tensor:
    """i2t scores (n_cap, n_img) of a block.

    sim (n_cap, L, n_img, R): word-region similarities; caption_gram (n_cap, L, L); region_sq
    (n_img, R) squared region norms; region_mask (n_img, R) True on real regions.
    """
    return _loaded().queries_in_lanes(sim, caption_gram, region_sq, region_mask, *_option_args(options))


def _option_args(options: ModelConfig) -> tuple[int, int, float, float]:
    return (RAW_FEATURE_NORMS.index(options.raw_feature_norm), AGG_FUNCS.index(options.agg_func),
            options.lambda_softmax, options.lambda_lse)


def _loaded():
    if not available():
        raise RuntimeError("the fused scoring kernel is not available on this machine")
    return torch.ops.scan_fused


@functools.cache
def available() -> bool:
    """Builds (first call on this machine) or loads the kernel; False, logged once, where that fails."""
    from torch.utils.cpp_extension import load  # imports setuptools machinery: only when needed

    _put_ninja_on_path()
    try:
        load(name=f"scan_fused_{_processor_tag()}", sources=[str(SOURCE)], extra_cflags=list(COMPILE_FLAGS),
             extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as error:  # no compiler, no ninja, an unsupported platform: eager scoring is exact too
        first_line = next(iter(str(error).splitlines()), type(error).__name__)
        _log.warning("fused SCAN scoring kernel unavailable (%s); scoring uses eager PyTorch", first_line)
        return False
    return True


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the pinned ninja package sits in the venv's bin."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _processor_tag() -> str:
    """Short hash of the CPU model and instruction set flags (the build uses -march=native)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        described = [next((line for line in lines if line.startswith(key)), "") for key in ("model name", "flags")]
    except OSError:
        described = [platform.machine(), platform.processor()]
    return hashlib.sha1("\n".join(described).encode()).hexdigest()[:12]
