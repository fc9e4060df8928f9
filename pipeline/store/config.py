"""Feature-store settings, defined once; the Luigi tasks generate their parameters from it."""
from __future__ import annotations

from dataclasses import dataclass, field

FEATURE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class StoreConfig:
    """How region features are laid out on disk (not what produced them: that is store.json)."""

    shard_size: int = field(default=100, metadata={
        "help": "Images per HDF5 shard; one shard is the unit of atomic writing and of re-extraction, so a crash "
                "costs at most the shard in progress (100 images: minutes of R101 on a CPU)."})
    feature_dtype: str = field(default="float16", metadata={
        "help": "On-disk feature dtype: float16 (half the disk, ~1e-3 relative error) | float32.",
        "choices": FEATURE_DTYPES})

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size={self.shard_size}; expected a positive number of images")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype={self.feature_dtype!r}; expected one of {', '.join(FEATURE_DTYPES)}")
