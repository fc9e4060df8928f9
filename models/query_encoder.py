"""The caption encoder used at query time: the trained float32 one, or its GRU with int8 weights.

A search answers one caption at a time, and then the bi-GRU's recurrent step is a matrix-vector
product bound by memory bandwidth: every word reads both directions' recurrent weights (2 x 12.6 MB
in float32 at embed_size 1024). PyTorch's dynamic quantization (torch.ao, fbgemm on x86) keeps them
as int8 and quantizes the activations on the fly, a quarter of the bytes per word. Measured on
the 2-core machine (README, search section): a 14-word query 31 ms -> 8 ms, word embeddings
within cosine 0.9999 of float32. "auto" uses it where the ranking is approximate anyway (two-stage,
global) and keeps exact search exactly the trained model's; evaluation never uses it.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from models.encoders import TextEncoder

QUERY_ENCODERS = ("auto", "int8", "float32")


def resolve_query_encoder(precision: str, mode: str) -> str:
    """"auto": int8 for the approximate modes (two-stage, global), float32 for exact."""
    if precision not in QUERY_ENCODERS:
        raise ValueError(f"query encoder precision {precision!r}; expected one of {', '.join(QUERY_ENCODERS)}")
    if precision != "auto":
        return precision
    return "float32" if mode == "exact" else "int8"


def query_text_encoder(encoder: TextEncoder, precision: str) -> TextEncoder:
    """``encoder`` itself for "float32"; for "int8", a CPU copy whose GRU has dynamically quantized int8 weights."""
    if precision == "float32":
        return encoder
    if precision != "int8":
        raise ValueError(f"query encoder precision {precision!r}; expected float32 or int8")
    quantized = copy.deepcopy(encoder).cpu().eval()
    with warnings.catch_warnings():
        # torch.ao's eager quantization warns that it moves to torchao, which has no recurrent layers yet.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(quantized, {nn.GRU}, dtype=torch.qint8, inplace=True)
