"""Published bottom-up-attention weights: fetch, read safely, convert to this detector's layout.

Two published layouts of the same Caffe model load here:

* airsplay (py-bottom-up-attention `faster_rcnn_from_caffe[_attr].pkl`): a pickle of
  {"model": {detectron2 name: numpy array}}; background class LAST (and "no attribute"
  last); RPN anchors in detectron2's size-major order.
* milvlg (bottom-up-attention.pytorch `bua-caffe-frcn-r101*.pth`): a torch state dict in
  Caffe's layout; background FIRST, softmax objectness pairs (2A channels: A background
  then A object), box regression with a background row (4 * 1601), attribute head named
  `cls_embed` / `attr_linear1` / `attr_linear2` ... with Caffe's "no attribute" first.

The internal layout is Caffe's class order with detectron2's sigmoid objectness; both files
convert into it exactly (sigmoid(a1 - a0) == softmax([a0, a1])[1]), so equivalent weights
give the same detections. Reading never runs pickled code.
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
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from extractors.config import BackboneSpec, ExtractorConfig
from pipeline.atomic import atomic_output
from pipeline.errors import InputError

RPN_PREFIX = "proposal_generator.rpn_head."
BOX_PREFIX = "roi_heads.box_predictor."
BN_STATS = ("running_mean", "running_var")
MILVLG_ATTR_NAMES = {"cls_embed.": "cls_embedding.", "attr_linear1.": "attr_linear1.", "attr_linear2.": "attr_linear2."}
StateDict = dict[str, torch.Tensor]


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


def detect_format(state: StateDict) -> str:
    """milvlg files have `cls_embed` or paired objectness channels; airsplay files do not."""
    if BOX_PREFIX + "cls_embed.weight" in state:
        return "milvlg"
    objectness = state.get(RPN_PREFIX + "objectness_logits.weight")
    anchor_deltas = state.get(RPN_PREFIX + "anchor_deltas.weight")
    if objectness is not None and anchor_deltas is not None and objectness.shape[0] * 2 == anchor_deltas.shape[0]:
        return "milvlg"
    return "airsplay"


# ---------------------------------------------------------------- layout conversion


def _background_first(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows[-1:], rows[:-1]])


def _background_last(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows[1:], rows[:1]])


def _anchor_permutation(spec: BackboneSpec) -> torch.Tensor:
    """index[j] = detectron2 (size-major) channel of our (ratio-major) anchor j."""
    sizes, ratios = len(spec.anchor_scales), len(spec.anchor_ratios)
    return torch.tensor([s * ratios + r for r in range(ratios) for s in range(sizes)])


def _permute_anchors(tensor: torch.Tensor, index: torch.Tensor, per_anchor: int) -> torch.Tensor:
    grouped = tensor.reshape(-1, per_anchor, *tensor.shape[1:])
    return grouped[index].reshape(tensor.shape)


def _airsplay_to_native(state: StateDict, spec: BackboneSpec) -> StateDict:
    native = dict(state)
    for key in ("cls_score.weight", "cls_score.bias", "cls_embedding.weight", "attr_linear2.weight", "attr_linear2.bias"):
        if BOX_PREFIX + key in native:
            native[BOX_PREFIX + key] = _background_first(native[BOX_PREFIX + key])
    _remap_rpn_anchors(native, _anchor_permutation(spec))
    return native


def _native_to_airsplay(state: StateDict, spec: BackboneSpec) -> StateDict:
    published = dict(state)
    for key in ("cls_score.weight", "cls_score.bias", "cls_embedding.weight", "attr_linear2.weight", "attr_linear2.bias"):
        published[BOX_PREFIX + key] = _background_last(published[BOX_PREFIX + key])
    _remap_rpn_anchors(published, torch.argsort(_anchor_permutation(spec)))
    return published


def _remap_rpn_anchors(state: StateDict, index: torch.Tensor) -> None:
    for suffix, per_anchor in (("objectness_logits", 1), ("anchor_deltas", 4)):
        for part in ("weight", "bias"):
            key = f"{RPN_PREFIX}{suffix}.{part}"
            if key in state and state[key].shape[0] == len(index) * per_anchor:
                state[key] = _permute_anchors(state[key], index, per_anchor)


def _milvlg_to_native(state: StateDict, spec: BackboneSpec) -> StateDict:
    native = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    for old, new in MILVLG_ATTR_NAMES.items():
        for part in ("weight", "bias"):
            if BOX_PREFIX + old + part in native:
                native[BOX_PREFIX + new + part] = native.pop(BOX_PREFIX + old + part)
    for part in ("weight", "bias"):
        key = f"{RPN_PREFIX}objectness_logits.{part}"
        if key in native and native[key].shape[0] == 2 * spec.num_anchors:
            background, foreground = native[key].chunk(2)
            native[key] = foreground - background  # softmax pair -> one equivalent sigmoid logit
        box_key = f"{BOX_PREFIX}bbox_pred.{part}"
        if box_key in native and native[box_key].shape[0] == 4 * (spec.num_classes + 1):
            native[box_key] = native[box_key][4:]  # the background row is never used
    return native


def _native_to_milvlg(state: StateDict, spec: BackboneSpec, seed: int = 0) -> StateDict:
    """Caffe layout; the free background objectness logit and background box row are seeded noise."""
    generator = torch.Generator().manual_seed(seed)
    published = dict(state)
    for new, old in ((v, k) for k, v in MILVLG_ATTR_NAMES.items()):
        for part in ("weight", "bias"):
            if BOX_PREFIX + new + part in published:
                published[BOX_PREFIX + old + part] = published.pop(BOX_PREFIX + new + part)
    for part in ("weight", "bias"):
        key = f"{RPN_PREFIX}objectness_logits.{part}"
        foreground = published[key]
        background = torch.randn(foreground.shape, generator=generator) * 0.01
        published[key] = torch.cat([background, background + foreground])
        box_key = f"{BOX_PREFIX}bbox_pred.{part}"
        box = published[box_key]
        published[box_key] = torch.cat([torch.randn((4, *box.shape[1:]), generator=generator) * 0.001, box])
    return published


TO_NATIVE: dict[str, Callable[[StateDict, BackboneSpec], StateDict]] = {
    "airsplay": _airsplay_to_native,
    "milvlg": _milvlg_to_native,
}
FROM_NATIVE: dict[str, Callable[[StateDict, BackboneSpec], StateDict]] = {
    "airsplay": _native_to_airsplay,
    "milvlg": _native_to_milvlg,
}


def to_native(state: StateDict, weights_format: str, spec: BackboneSpec) -> StateDict:
    """Convert a published state dict into this detector's names and layout."""
    native = TO_NATIVE[weights_format](state, spec)
    _fill_identity_bn_stats(native)
    return native


def to_published(native: StateDict, weights_format: str, spec: BackboneSpec) -> StateDict:
    """This detector's state dict in a published layout (to write files in that exact format)."""
    return FROM_NATIVE[weights_format]({k: v.detach().cpu() for k, v in native.items()}, spec)


def _fill_identity_bn_stats(state: StateDict) -> None:
    """Caffe-converted frozen norms may carry only scale and shift: give them mean 0, var 1."""
    for key in [k for k in state if k.endswith(".norm.weight")]:
        prefix = key[: -len("weight")]
        if prefix + "bias" in state and not any(prefix + stat in state for stat in BN_STATS):
            state[prefix + "running_mean"] = torch.zeros_like(state[key])
            state[prefix + "running_var"] = torch.ones_like(state[key])


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


def check_weights(path: Path, weights_format: str, model: torch.nn.Module, spec: BackboneSpec) -> tuple[KeyReport, StateDict]:
    """Read `path`, convert it, and report how its keys match `model` (nothing is loaded)."""
    state = read_checkpoint(path)
    resolved_format = detect_format(state) if weights_format == "auto" else weights_format
    native = to_native(state, resolved_format, spec)
    return compare_keys(native, model.state_dict()), native


def load_weights(model: torch.nn.Module, config: ExtractorConfig) -> KeyReport:
    """Fetch and load `config.weights` into `model`; any missing/unexpected/mismatched key is an error."""
    path = fetch_weights(config.weights, sha256=config.weights_sha256, cache_dir=config.cache_dir)
    report, native = check_weights(path, config.weights_format, model, config.spec)
    if not report.ok:
        raise InputError(path, f"weights do not fit backbone {config.backbone}: {report.summary()}")
    model.load_state_dict({k: v.float() for k, v in native.items()}, strict=True)
    return report


# ---------------------------------------------------------------- fetching

WEIGHTS_HELP = ("pass the bottom-up-attention weights (--weights, or --extractor-weights in the workflow): a path or URL, "
                "e.g. airsplay's faster_rcnn_from_caffe_attr.pkl or MILVLG's bua-caffe-frcn-r101-k36.pth "
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


def write_published(native: StateDict, path: Path, weights_format: str, spec: BackboneSpec) -> None:
    """Write `native` weights as a file in a published container (atomic: temp + rename)."""
    published = to_published(native, weights_format, spec)
    buffer = io.BytesIO()
    if weights_format == "airsplay":
        arrays = {k: v.numpy() for k, v in published.items()}
        pickle.dump({"model": arrays, "__author__": "scan-pipeline"}, buffer, protocol=4)
    else:
        torch.save({"model": published}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_bytes(buffer.getvalue())
