"""Where a store's features come from: the detector (`extract`) or published files to import.

`--features extract | precomp:DIR | tsv:FILE | npz:DIR`: SCAN precomp `{split}_ims.npy`, BUTD TSV, or
a folder of MILVLG `.npz` files (readers in pipeline.store.interop).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from pipeline.errors import InputError
from pipeline.store.interop import read_butd_tsv, read_milvlg_npz, read_scan_precomp
from pipeline.store.records import RegionRecord

FEATURE_KINDS = ("extract", "precomp", "tsv", "npz")
PRECOMP_SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class FeatureSource:
    """`kind` (extract | precomp | tsv | npz) and, for imports, the file or folder to read."""

    kind: str
    path: Optional[Path] = None

    @classmethod
    def parse(cls, spec: str) -> "FeatureSource":
        """`extract` | `precomp:PATH` | `tsv:PATH` | `npz:PATH`."""
        kind, _, path = spec.partition(":")
        if kind not in FEATURE_KINDS or (kind == "extract") != (path == ""):
            raise ValueError(f"--features {spec!r}: expected extract, precomp:DIR, tsv:FILE or npz:DIR")
        return cls(kind, Path(path).expanduser().resolve() if path else None)

    @property
    def extracted(self) -> bool:
        return self.kind == "extract"

    def files(self) -> list[Path]:
        """The files an import reads (what its result depends on); [] for extraction or a missing path."""
        if self.path is None or not self.path.exists():
            return []
        if self.kind == "tsv":
            return [self.path]
        if self.kind == "npz":
            return sorted(self.path.glob("*.npz"))
        return sorted(path for split in PRECOMP_SPLITS for path in self.path.glob(f"{split}_i[md]s.*"))

    def records(self, split_ids: Callable[[str], list[str]]) -> Iterator[RegionRecord]:
        """The imported regions; precomp rows take `{split}_ids.txt` or, without it, `split_ids(split)`.

        SCAN's precomp files follow the Karpathy JSON's order of each split, so the dataset's own
        split order names their rows.
        """
        if self.path is None or not self.path.exists():
            raise InputError(self.path or self.kind, f"--features {self.kind}: no such "
                             f"{'file' if self.kind == 'tsv' else 'directory'}")
        if self.kind == "tsv":
            return read_butd_tsv(self.path)
        if self.kind == "npz":
            return (read_milvlg_npz(file) for file in sorted(self.path.glob("*.npz")))
        return self._precomp(split_ids)

    def _precomp(self, split_ids: Callable[[str], list[str]]) -> Iterator[RegionRecord]:
        assert self.path is not None
        for split in PRECOMP_SPLITS:
            ims = self.path / f"{split}_ims.npy"
            if ims.exists():
                ids_file = self.path / f"{split}_ids.txt"
                yield from read_scan_precomp(ims,
                                             ids_file.read_text().split() if ids_file.exists() else split_ids(split))
