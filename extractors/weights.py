"""Published bottom-up-attention weights: fetch, read safely, convert (layouts.py), check and load.

Reading never runs pickled code: a restricted unpickler for `.pkl`, `weights_only` for `.pth`.
Loading is strict: any missing, unexpected or shape-mismatched key is an error naming the file.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from extractors.config import BackboneSpec, ExtractorConfig
from extractors.layouts import ConvertedWeights, LayoutError, StateDict, to_native, to_published
from pipeline.atomic import atomic_output
from pipeline.errors import InputError


# ---------------------------------------------------------------- reading


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only containers, numpy arrays, dtypes and scalars: no pickled code can run."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how Python-2-compatible pickles spell bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only arrays and containers are allowed")


def read_pickle_arrays(path: Path) -> object:
    """Unpickle a (possibly Python 2, latin1) file of numpy arrays without executing code."""
    with open(path, "rb") as handle:
        try:
            return _ArrayUnpickler(handle, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
            raise InputError(path, f"not a readable weights pickle: {error}") from error


def read_checkpoint(path: Path) -> StateDict:
    """{name: tensor} from a .pkl (detectron2 style) or .pth/.pt (torch) weights file."""
    if path.suffix == ".pkl":
        container = read_pickle_arrays(path)
    else:
        try:
            container = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several unrelated types for bad files
            raise InputError(path, f"not a readable torch weights file: {error}") from error
    state = container.get("model", container) if isinstance(container, dict) else None
    if not isinstance(state, dict) or not state:
        raise InputError(path, "expected a dict of named arrays (optionally under 'model')")
    tensors: StateDict = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray) or np.isscalar(value):
            array = np.array(value)
            if array.dtype.kind not in "biuf":
                raise InputError(path, f"entry is {array.dtype} data, not an array of numbers", location=f"key {name}")
            value = torch.from_numpy(array)
        if not isinstance(value, torch.Tensor):
            raise InputError(path, f"entry is {type(value).__name__}, not an array", location=f"key {name}")
        tensors[str(name)] = value
    return tensors


# ---------------------------------------------------------------- checking and loading


@dataclass
class KeyReport:
    """How a weights file's entries line up with the model's."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        def head(names: list[str]) -> str:
            return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")

        return (f"missing {len(self.missing)} [{head(self.missing)}], unexpected {len(self.unexpected)} "
                f"[{head(self.unexpected)}], shape-mismatched {len(self.mismatched)} [{head(self.mismatched)}]")


def compare_keys(native: StateDict, expected: StateDict) -> KeyReport:
    report = KeyReport()
    report.missing = sorted(set(expected) - set(native))
    report.unexpected = sorted(set(native) - set(expected))
    report.mismatched = sorted(
        f"{k} {tuple(native[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(native) & set(expected) if native[k].shape != expected[k].shape
    )
    return report


def convert_file(path: Path, weights_format: str, spec: BackboneSpec) -> ConvertedWeights:
    """Read `path` and convert it to the internal layout (nothing is loaded into a model)."""
    state = read_checkpoint(path)
    try:
        converted = to_native(state, weights_format, spec)
    except LayoutError as error:
        raise InputError(path, str(error)) from error
    converted.source = path
    return converted


def read_weights(config: ExtractorConfig) -> ConvertedWeights:
    """Fetch (URL: download once, SHA-256 checked when given) and convert `config.weights`."""
    path = fetch_weights(config.weights, sha256=config.weights_sha256, cache_dir=config.cache_dir)
    return convert_file(path, config.weights_format, config.spec)


def load_converted(model: torch.nn.Module, converted: ConvertedWeights, backbone: str) -> KeyReport:
    """Load converted weights into `model`; any missing/unexpected/mismatched key is an error naming the file."""
    report = compare_keys(converted.native, model.state_dict())
    if not report.ok:
        raise InputError(converted.source, f"weights do not fit backbone {backbone}: {report.summary()}")
    model.load_state_dict({k: v.float() for k, v in converted.native.items()}, strict=True)
    return report


# ---------------------------------------------------------------- fetching

WEIGHTS_HELP = ("pass the bottom-up-attention weights (--weights, or --extractor-weights in the workflow): a path or "
                "URL, e.g. airsplay's faster_rcnn_from_caffe_attr.pkl or MILVLG's bua-caffe-frcn-r101-k36.pth "
                "(see README, Weights)")


def require_weights(config: ExtractorConfig, dataset: str) -> None:
    """Refuse to describe a real dataset with a randomly initialised detector (only the demo does that)."""
    if not config.weights:
        raise InputError(f"extractor weights for {dataset}", WEIGHTS_HELP)
    if "://" not in config.weights and not Path(config.weights).expanduser().is_file():
        raise InputError(config.weights, f"extractor weights file is missing; {WEIGHTS_HELP}")



def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scan-pipeline" / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(source: str, *, sha256: str = "", cache_dir: str = "") -> Path:
    """Local path, or URL downloaded once into the cache; the SHA-256 is checked when given."""
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https", "ftp", "file"):
        path = _download(source, Path(cache_dir) if cache_dir else default_cache_dir(), sha256)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(path, "weights file not found")
    _check_sha256(path, sha256)
    return path


def _check_sha256(path: Path, expected: str) -> None:
    if expected and (actual := sha256_of(path)) != expected.lower():
        raise InputError(path, f"SHA-256 is {actual}, expected {expected.lower()}")


def _download(url: str, cache_dir: Path, sha256: str) -> Path:
    """Stream `url` into cache_dir/<name> via a temp file, verified before the rename."""
    name = Path(urllib.parse.urlparse(url).path).name or "weights"
    target = cache_dir / name
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as temporary:
        with open(temporary, "wb") as handle, urllib.request.urlopen(url) as response:  # noqa: S310 (the user chose this URL)
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as progress:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    handle.write(chunk)
                    progress.update(len(chunk))
        _check_sha256(temporary, sha256)
    return target


# ---------------------------------------------------------------- writing (format fixtures, conversion)


def write_published(native: StateDict, path: Path, weights_format: str, spec: BackboneSpec, *,
                    cell_anchors: bool = False) -> None:
    """Write `native` weights as a file in a published container (atomic: temp + rename)."""
    published = to_published(native, weights_format, spec, cell_anchors=cell_anchors)
    buffer = io.BytesIO()
    if weights_format == "airsplay":
        arrays = {k: v.numpy() for k, v in published.items()}
        pickle.dump({"model": arrays, "__author__": "scan-pipeline"}, buffer, protocol=4)
    else:
        torch.save({"model": published}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_bytes(buffer.getvalue())
