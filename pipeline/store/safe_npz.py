"""Read .npz files whose entries may be pickled object arrays, without running arbitrary pickles.

MILVLG's extractor saves `info=dict(...)` with np.savez, which numpy can only load with
allow_pickle=True, i.e. by executing whatever the file says. Here object entries are unpickled
by an Unpickler that can build numpy arrays, dtypes and scalars and nothing else.
"""
from __future__ import annotations

import pickle
import zipfile
from os import PathLike
from typing import Any

import numpy as np

from pipeline.errors import InputError

_ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def load_npz(path: str | PathLike[str]) -> dict[str, Any]:
    """All entries of an .npz file; plain arrays as numpy loads them, object arrays unpickled safely."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy"): _load_member(archive, name) for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise InputError(path, f"not a readable .npz archive ({error})") from error


def _load_member(archive: zipfile.ZipFile, name: str) -> Any:
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version not in _HEADER_READERS:
            raise ValueError(f"entry {name}: unsupported .npy format version {version}")
        shape, fortran_order, dtype = _HEADER_READERS[version](member)
        if dtype.hasobject:
            array = _NumpyOnlyUnpickler(member).load()
            return array.item() if isinstance(array, np.ndarray) and array.shape == () else array
        data = np.frombuffer(member.read(), dtype=dtype, count=int(np.prod(shape)))
        return data.reshape(shape, order="F" if fortran_order else "C")
