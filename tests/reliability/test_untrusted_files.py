"""Weights and checkpoints that are damaged, do not fit, or try to run code when loaded.

Every reader of pickled data must refuse a `__reduce__` payload (the marker file must never
appear) and every damaged file must give an InputError naming it.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from extractors.config import ExtractorConfig
from extractors.detector import BottomUpDetector, build_detector
from extractors.weights import read_checkpoint as read_detector_weights
from extractors.weights import write_published
from models.compat import load_model, read_checkpoint
from models.config import TrainConfig
from models.data import PrecompFeatures
from doctor import diagnose
from models.train import LAST_CHECKPOINT, train
from pipeline.errors import InputError
from pipeline.store.interop import read_milvlg_npz, read_scan_precomp
from pipeline.store.safe_npz import load_npz
from tests.reliability.workspace_builder import MODEL, save_checkpoint

CONFIG = ExtractorConfig(backbone="R18-C4-demo", device="cpu")


class _RunsShell:
    """Unpickling this runs `touch marker` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _RunsPython:
    """Unpickling this runs Python code through builtins.exec."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


PAYLOADS = {"os.system": _RunsShell, "exec": _RunsPython}


def _pickle_file(path: Path, value: object) -> Path:
    path.write_bytes(pickle.dumps(value, protocol=2))
    return path


def _torch_file(path: Path, value: object, zipped: bool = True) -> Path:
    torch.save(value, path, _use_new_zipfile_serialization=zipped)
    return path


def _object_npy(path: Path, value: object) -> Path:
    np.save(path, np.array([value], dtype=object), allow_pickle=True)
    return path


def _loaders(tmp_path: Path, exploit: object) -> dict[str, tuple]:
    """name -> (load function, malicious file) for every reader of pickled data in the project."""
    model_dir = tmp_path / "train-out"
    model_dir.mkdir()
    resume = _torch_file(model_dir / LAST_CHECKPOINT, {"format": "scan-pipeline/1", "model": exploit})

    def resume_training(_: Path) -> None:
        train(MODEL, TrainConfig(num_epochs=1, batch_size=2, workers=0, device="cpu"), 10, None, None, model_dir)

    return {
        "detector weights .pkl (airsplay)": (read_detector_weights,
                                             _pickle_file(tmp_path / "w.pkl", {"model": {"a": exploit}})),
        "detector weights .pth (milvlg)": (read_detector_weights,
                                           _torch_file(tmp_path / "w.pth", {"model": {"a": exploit}})),
        "detector weights legacy .pth": (read_detector_weights,
                                         _torch_file(tmp_path / "l.pth", {"a": exploit}, zipped=False)),
        "SCAN checkpoint": (read_checkpoint,
                            _torch_file(tmp_path / "model_best.pth.tar", {"model": exploit, "opt": exploit})),
        "SCAN checkpoint, legacy format": (load_model,
                                           _torch_file(tmp_path / "old.pth.tar", {"model": exploit}, zipped=False)),
        "MILVLG npz info": (read_milvlg_npz, _npz_with_info(tmp_path / "f.npz", exploit)),
        "safe_npz object entry": (load_npz, _npz_with_info(tmp_path / "g.npz", exploit)),
        "SCAN precomp ims.npy": (lambda p: list(read_scan_precomp(p)), _object_npy(tmp_path / "a_ims.npy", exploit)),
        "training data ims.npy": (PrecompFeatures, _object_npy(tmp_path / "b_ims.npy", exploit)),
        "training resume checkpoint.pth": (resume_training, resume),
    }


def _npz_with_info(path: Path, exploit: object) -> Path:
    np.savez(path, x=np.ones((1, 4), np.float32), bbox=np.ones((1, 4), np.float32), num_bbox=1, image_h=2, image_w=2,
             info=np.array(exploit, dtype=object))
    return path


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_every_pickle_reader_refuses_code(tmp_path, payload) -> None:
    marker = tmp_path / "marker"
    loaders = _loaders(tmp_path, PAYLOADS[payload](marker))
    for name, (load, path) in loaders.items():
        with pytest.raises(Exception) as raised:
            load(path)
        assert not marker.exists(), f"{name} ran the pickled code"
        assert isinstance(raised.value, InputError) and raised.value.path == str(path), (name, raised.value)
    assert len(loaders) == 10


def test_doctor_refuses_code_in_checkpoints(tmp_path) -> None:
    marker = tmp_path / "marker"
    _torch_file(tmp_path / "checkpoint.pth", {"model": _RunsShell(marker)}, zipped=False)
    [finding] = diagnose(tmp_path).findings
    assert finding.check == "checkpoint" and not marker.exists()


def test_damaged_resume_checkpoint_is_a_clear_error(tmp_path) -> None:
    save_checkpoint(tmp_path / LAST_CHECKPOINT, 10)
    data = (tmp_path / LAST_CHECKPOINT).read_bytes()
    (tmp_path / LAST_CHECKPOINT).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=LAST_CHECKPOINT):
        train(MODEL, TrainConfig(num_epochs=1, batch_size=2, workers=0, device="cpu"), 10, None, None, tmp_path)


# ---------------------------------------------------------------- damaged SCAN / our checkpoints


def test_damaged_model_checkpoints(tmp_path) -> None:
    good = save_checkpoint(tmp_path / "good.pth", 12)
    assert load_model(good).vocab_size == 12
    payload = torch.load(good, weights_only=True)
    data = good.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 3], "refused or unreadable checkpoint"),
        "empty": (b"", "refused or unreadable checkpoint"),
        "not a dict": (None, "expected a dict with a 'model' entry"),
        "wrong shapes": ({**payload, "model": {**payload["model"], "img_enc.fc.weight": torch.zeros(2, 2)}},
                         "do not fit"),
        "missing keys": ({**payload, "model": {}}, "do not fit"),
        "extra keys": ({**payload, "model": {**payload["model"], "extra.weight": torch.zeros(1)}}, "do not fit"),
        "bad model_config": ({**payload, "model_config": {"agg_func": "Median"}}, "bad model_config"),
        "reference without opt": ({"model": [{}, {}]}, "without 'opt'"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / f"{name}.pth"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content if content is not None else [1, 2], path)
        with pytest.raises(InputError) as raised:
            load_model(path)
        assert raised.value.path == str(path) and problem in raised.value.problem, (name, raised.value)


# ---------------------------------------------------------------- detector weights


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    """The R18 demo detector's random weights in both published layouts."""
    folder = tmp_path_factory.mktemp("weights")
    native = BottomUpDetector(CONFIG).state_dict()
    files = {}
    for fmt, name in (("airsplay", "w.pkl"), ("milvlg", "w.pth")):
        write_published(native, folder / name, fmt, CONFIG.spec)
        files[fmt] = folder / name
    return files


def _read_any(path: Path) -> dict:
    if path.suffix == ".pkl":
        with open(path, "rb") as handle:
            return pickle.load(handle)
    return torch.load(path, weights_only=True)


def _write_any(path: Path, container: dict) -> None:
    if path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(container))
    else:
        torch.save(container, path)


def _rpn_key(state: dict) -> str:
    return next(key for key in state if "objectness_logits.weight" in key)


WEIGHT_DAMAGE = {
    "missing key": (lambda s: s.pop(next(iter(s))), "missing 1"),
    "unexpected key": (lambda s: s.__setitem__("extra.weight", s[next(iter(s))]), "unexpected 1"),
    "wrong shape": (lambda s: s.__setitem__(_rpn_key(s), s[_rpn_key(s)][:1]), "shape-mismatched 1"),
    "entry is a list": (lambda s: s.__setitem__(next(iter(s)), [1, 2]), "not an array"),
}


@pytest.mark.parametrize("fmt", ["airsplay", "milvlg"])
@pytest.mark.parametrize("damage", sorted(WEIGHT_DAMAGE))
def test_weights_that_do_not_fit_are_refused(tmp_path, published, fmt, damage) -> None:
    change, problem = WEIGHT_DAMAGE[damage]
    container = _read_any(published[fmt])
    state = dict(container["model"])
    change(state)
    path = tmp_path / published[fmt].name
    _write_any(path, {"model": state})
    with pytest.raises(InputError) as raised:
        build_detector(replace(CONFIG, weights=str(path), weights_format=fmt))
    assert raised.value.path == str(path) and problem in raised.value.problem


@pytest.mark.parametrize("fmt", ["airsplay", "milvlg"])
def test_truncated_and_foreign_weight_files_are_refused(tmp_path, published, fmt) -> None:
    assert build_detector(replace(CONFIG, weights=str(published[fmt]), weights_format=fmt)) is not None
    data = published[fmt].read_bytes()
    path = tmp_path / published[fmt].name
    for content in (data[: len(data) // 2], data[:10], b"", b"<html>404</html>"):
        path.write_bytes(content)
        with pytest.raises(InputError) as raised:
            build_detector(replace(CONFIG, weights=str(path), weights_format=fmt))
        assert raised.value.path == str(path)
    _write_any(path, {"model": []})
    with pytest.raises(InputError, match="expected a dict of named arrays"):
        build_detector(replace(CONFIG, weights=str(path), weights_format=fmt))
    with pytest.raises(InputError, match="SHA-256 is"):
        build_detector(replace(CONFIG, weights=str(published[fmt]), weights_sha256="0" * 64))


@pytest.mark.parametrize("fmt", ["airsplay", "milvlg"])
def test_text_entry_in_weights_is_an_input_error(tmp_path, published, fmt) -> None:
    state = dict(_read_any(published[fmt])["model"])
    state[next(iter(state))] = "text"
    path = tmp_path / published[fmt].name
    _write_any(path, {"model": state})
    with pytest.raises(InputError, match="not an array"):
        build_detector(replace(CONFIG, weights=str(path), weights_format=fmt))
