"""The one reading of a `device` setting ("auto" | "cpu" | "cuda" | "cuda:N") used by every stage."""
from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """`auto` -> cuda when available, else cpu; an unnumbered cuda device under torchrun -> cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and local_rank is not None and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
