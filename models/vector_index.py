"""Inner-product search over global vectors with FAISS: exact (flat) for small galleries, IVF above.

A flat index scans every vector (exact, 4 bytes a dimension); above ``FLAT_LIMIT`` vectors an
inverted-file index with 8-bit scalar quantisation (``IVF<nlist>,SQ8``, 1 byte a dimension) scans
only the ``nprobe`` lists nearest the query. ``FLAT_LIMIT`` keeps galleries whose flat float32
vectors fit comfortably in memory (200,000 x 1024 x 4 B = 0.8 GB) exact; ``benchmarks/bench_search.py
--index-sizes`` measures flat and IVF latency and IVF's recall of flat's shortlist to revisit it (README,
Search, says what was measured so far).
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import faiss
import numpy as np

from pipeline.atomic import atomic_output
from pipeline.errors import InputError

KINDS = ("auto", "flat", "ivf")
FLAT_LIMIT = 200_000
DEFAULT_NPROBE = 32
TRAIN_POINTS_PER_LIST = 50  # k-means sample per inverted list (FAISS asks for at least 39)
KMEANS_ITERATIONS = 10
ADD_CHUNK = 65_536          # vectors converted to float32 and added at a time


def ivf_lists(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest sqrt(n) (1024 for a million)."""
    return int(2 ** round(np.log2(max(n, 1) ** 0.5)))


class VectorIndex:
    """A FAISS inner-product index whose ids are the gallery rows 0..n-1, in insertion order."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "auto", *, seed: int = 0) -> VectorIndex:
        """An index over (n, d) vectors (any array-like, e.g. a float16 memory map, read in chunks):
        ``flat`` (exact), ``ivf`` (k-means on a sample), or ``auto`` by size."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; expected one of {', '.join(KINDS)}")
        if len(vectors.shape) != 2:
            raise ValueError(f"expected (n, d) vectors, got shape {vectors.shape}")
        if kind == "flat" or (kind == "auto" and len(vectors) <= FLAT_LIMIT):
            built = cls(faiss.IndexFlatIP(vectors.shape[1]))
        else:
            built = cls(_trained_ivf(vectors, seed))
        for start in range(0, len(vectors), ADD_CHUNK):
            built.add(vectors[start:start + ADD_CHUNK])
        return built

    @property
    def kind(self) -> str:
        return "flat" if isinstance(self.index, faiss.IndexFlat) else "ivf"

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def add(self, vectors: np.ndarray) -> None:
        """Appends vectors; their ids continue from len(self)."""
        vectors = _float32(vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of dimension {vectors.shape[1]} for an index of dimension {self.dim}")
        if len(vectors):
            self.index.add(vectors)

    def search(self, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) (n_query, n), best first; id -1 past the gallery's size."""
        scores, ids = self.index.search(_float32(vectors), n)
        return scores, ids

    def set_nprobe(self, nprobe: int) -> None:
        """Lists scanned per query by an IVF index (more: closer to exact, slower); flat ignores it."""
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = nprobe

    def save(self, path: str | PathLike[str]) -> Path:
        path = Path(path)
        with atomic_output(path) as temporary:
            faiss.write_index(self.index, str(temporary))
        return path

    @classmethod
    def load(cls, path: str | PathLike[str]) -> VectorIndex:
        try:
            return cls(faiss.read_index(str(path)))
        except RuntimeError as error:
            raise InputError(path, f"unreadable FAISS index ({str(error).splitlines()[0]}); rebuild it") from error


def _trained_ivf(vectors: np.ndarray, seed: int) -> faiss.Index:
    """IVF-SQ8 over inner products, k-means on TRAIN_POINTS_PER_LIST vectors per list."""
    dim, lists = vectors.shape[1], ivf_lists(len(vectors))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    sample = np.random.default_rng(seed).choice(len(vectors), size=min(len(vectors), TRAIN_POINTS_PER_LIST * lists),
                                                replace=False)
    index.train(_float32(vectors[np.sort(sample)]))
    index.nprobe = DEFAULT_NPROBE
    return index


def _float32(vectors: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"expected (n, d) vectors, got shape {array.shape}")
    return array
