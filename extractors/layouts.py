"""The published layouts of the bottom-up-attention weights, converted exactly to this detector's.

* airsplay (py-bottom-up-attention `faster_rcnn_from_caffe[_attr].pkl`): detectron2 names;
  background class LAST in `cls_score` / `cls_embedding`, "no attribute" last in `attr_score`
  (`fast_rcnn.py` lines 90, 351-353; attribute demo cell 4); RPN channels in detectron2's
  size-major anchor order (`anchor_generator.py` lines 163-174); class box deltas scaled by
  detectron2's ROI_BOX_HEAD.BBOX_REG_WEIGHTS (10, 10, 5, 5) (`config/defaults.py` line 285);
  no attribute head at all in the attribute-free file.
* milvlg (bottom-up-attention.pytorch `bua-caffe-frcn-r101*.pth`): Caffe's layout, background
  FIRST, softmax objectness pairs (2A channels: A background then A object), box regression
  with a background row (4 * 1601), attribute head `cls_embed` / `attr_linear1` /
  `attr_linear2` (`bua/caffe/modeling/fast_rcnn.py` lines 245-257), Caffe anchor order.

Either file may carry `proposal_generator.anchor_generator.cell_anchors.0` (detectron2 keeps
the anchors as a buffer); it must be its format's anchors in some order, which then gives the
order of the RPN channels. Internal layout: Caffe's class order, detectron2's names and
sigmoid objectness, Caffe's ratio-major anchors, Caffe's box-delta units (weights 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from extractors.config import BackboneSpec
from extractors.roi_heads import ATTRIBUTE_MODULES
from extractors.rpn import CELL_ANCHORS

RPN_PREFIX = "proposal_generator.rpn_head."
BOX_PREFIX = "roi_heads.box_predictor."
CELL_ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
MILVLG_ATTRIBUTE_NAMES = {"cls_embed": "cls_embedding", "attr_linear1": "fc_attr", "attr_linear2": "attr_score"}
DETECTRON2_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BACKGROUND_LAST_KEYS = ("cls_score.weight", "cls_score.bias", "cls_embedding.weight",
                        "attr_score.weight", "attr_score.bias")
ANCHOR_STYLE = {"airsplay": "airsplay", "milvlg": "caffe"}  # whose generator made a file's cell anchors
ANCHOR_GENERATOR_NAMES = {"airsplay": "detectron2's generate_cell_anchors", "caffe": "Caffe's generate_anchors"}
StateDict = dict[str, torch.Tensor]


class LayoutError(ValueError):
    """A weights file that is in no layout this detector can convert exactly."""


@dataclass
class ConvertedWeights:
    """A published state dict in the internal layout, with what the conversion did, in words."""

    native: StateDict
    weights_format: str
    notes: list[str] = field(default_factory=list)
    source: Optional[Path] = None  # the file it came from, for error messages

    @property
    def with_attributes(self) -> bool:
        return any(key.startswith(BOX_PREFIX + name + ".") for key in self.native for name in ATTRIBUTE_MODULES)


def detect_format(state: StateDict) -> str:
    """milvlg files have MILVLG's attribute names or paired objectness channels; airsplay files neither."""
    if any(BOX_PREFIX + old + ".weight" in state for old in MILVLG_ATTRIBUTE_NAMES):
        return "milvlg"
    objectness = state.get(RPN_PREFIX + "objectness_logits.weight")
    anchor_deltas = state.get(RPN_PREFIX + "anchor_deltas.weight")
    if objectness is not None and anchor_deltas is not None and objectness.shape[0] * 2 == anchor_deltas.shape[0]:
        return "milvlg"
    return "airsplay"


# ---------------------------------------------------------------- anchors


def size_major_order(spec: BackboneSpec) -> list[int]:
    """detectron2's channel order: file channel k (for each size, each ratio) is internal anchor order[k]."""
    sizes, ratios = len(spec.anchor_scales), len(spec.anchor_ratios)
    return [r * sizes + s for s in range(sizes) for r in range(ratios)]


def _stored_anchor_order(stored: torch.Tensor, expected: torch.Tensor, style: str) -> list[int]:
    """Match each stored anchor row to the internal anchor it equals; refuse anything else."""
    order = []
    if tuple(stored.shape) == tuple(expected.shape):
        for row in stored.float():
            matches = [j for j, anchor in enumerate(expected) if torch.allclose(row, anchor, atol=1e-3)]
            order.append(matches[0] if matches else -1)
    if sorted(order) != list(range(len(expected))):
        raise LayoutError(f"{CELL_ANCHORS_KEY} holds {tuple(stored.shape)} anchors starting "
                          f"{stored.flatten()[:8].tolist()}; "
                          f"expected the {len(expected)} anchors of {ANCHOR_GENERATOR_NAMES[style]}, starting "
                          f"{expected.flatten()[:8].tolist()}, in some order: the file was made for another anchor "
                          "setup, so its RPN outputs would not mean what this detector assumes")
    return order


def _rpn_to_native(state: StateDict, spec: BackboneSpec, weights_format: str, notes: list[str]) -> None:
    """Put the RPN channels in internal anchor order: the file's cell anchors say which, else its format."""
    style = ANCHOR_STYLE[weights_format]
    usual = size_major_order(spec) if weights_format == "airsplay" else list(range(spec.num_anchors))
    stored = state.pop(CELL_ANCHORS_KEY, None)
    if stored is None:
        order = usual
        notes.append(f"cell anchors: not in the file; RPN channels taken in {weights_format}'s usual anchor order")
    else:
        order = _stored_anchor_order(stored, CELL_ANCHORS[style](spec.anchor_scales, spec.anchor_ratios), style)
        notes.append(f"cell anchors: {CELL_ANCHORS_KEY} checked: equal to {ANCHOR_GENERATOR_NAMES[style]} for scales "
                     f"{spec.anchor_scales}, ratios {spec.anchor_ratios}, in the file's channel order")
    native_from_file = torch.argsort(torch.tensor(order))
    for suffix, per_anchor in (("objectness_logits", 1), ("anchor_deltas", 4)):
        for part in ("weight", "bias"):
            key = f"{RPN_PREFIX}{suffix}.{part}"
            if key in state and state[key].shape[0] == len(order) * per_anchor:
                grouped = state[key].reshape(len(order), per_anchor, *state[key].shape[1:])
                state[key] = grouped[native_from_file].reshape(state[key].shape)
    if order == list(range(len(order))):
        notes.append("RPN anchors: in Caffe's ratio-major order already, unchanged")
    elif order == size_major_order(spec):
        notes.append("RPN anchors: permuted from detectron2's size-major order to Caffe's ratio-major order")
    else:
        notes.append(f"RPN anchors: permuted from the file's order {order} to Caffe's ratio-major order")


def _rpn_from_native(published: StateDict, spec: BackboneSpec, weights_format: str, cell_anchors: bool) -> None:
    order = size_major_order(spec) if weights_format == "airsplay" else list(range(spec.num_anchors))
    for suffix, per_anchor in (("objectness_logits", 1), ("anchor_deltas", 4)):
        for part in ("weight", "bias"):
            key = f"{RPN_PREFIX}{suffix}.{part}"
            grouped = published[key].reshape(len(order), per_anchor, *published[key].shape[1:])
            published[key] = grouped[torch.tensor(order)].reshape(published[key].shape)
    if cell_anchors:
        anchors = CELL_ANCHORS[ANCHOR_STYLE[weights_format]](spec.anchor_scales, spec.anchor_ratios)
        published[CELL_ANCHORS_KEY] = anchors[torch.tensor(order)]


# ---------------------------------------------------------------- whole layouts


def _rows_per_coordinate(weights: tuple[float, ...], rows: int) -> torch.Tensor:
    return torch.tensor(weights).repeat(rows // len(weights))


def _scale_box_rows(state: StateDict, spec: BackboneSpec, factor: float) -> bool:
    """Multiply the class box deltas by detectron2's weights ** factor; False if absent or mis-shaped."""
    found = False
    for part in ("weight", "bias"):
        key = f"{BOX_PREFIX}bbox_pred.{part}"
        if key in state and state[key].shape[0] == 4 * spec.num_classes:
            weights = _rows_per_coordinate(DETECTRON2_BOX_WEIGHTS, spec.num_classes * 4) ** factor
            state[key] = state[key] * weights.reshape(-1, *[1] * (state[key].dim() - 1)).to(state[key].dtype)
            found = True
    return found


def _airsplay_to_native(state: StateDict, spec: BackboneSpec) -> ConvertedWeights:
    native, notes = dict(state), []
    moved = [key for key in BACKGROUND_LAST_KEYS if BOX_PREFIX + key in native]
    for key in moved:
        native[BOX_PREFIX + key] = torch.cat([native[BOX_PREFIX + key][-1:], native[BOX_PREFIX + key][:-1]])
    notes.append(f"background class / 'no attribute': moved from last to first in {', '.join(moved) or 'nothing'}")
    _rpn_to_native(native, spec, "airsplay", notes)
    notes.append("objectness: one sigmoid logit per anchor, used as is")
    if _scale_box_rows(native, spec, -1.0):
        notes.append(f"box regression: {4 * spec.num_classes} class deltas divided by the BBOX_REG_WEIGHTS "
                     f"{DETECTRON2_BOX_WEIGHTS} the fork decodes them with, into Caffe's units")
    return ConvertedWeights(native, "airsplay", notes)


def _milvlg_to_native(state: StateDict, spec: BackboneSpec) -> ConvertedWeights:
    native = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    dropped = len(state) - len(native)
    notes = ["background class / 'no attribute': first, as in Caffe, unchanged"
             + (f" ({dropped} num_batches_tracked entries dropped)" if dropped else "")]
    renamed = []
    for old, new in MILVLG_ATTRIBUTE_NAMES.items():
        for part in ("weight", "bias"):
            if BOX_PREFIX + f"{old}.{part}" in native:
                native[BOX_PREFIX + f"{new}.{part}"] = native.pop(BOX_PREFIX + f"{old}.{part}")
                renamed.append(f"{old}.{part}")
    if renamed:
        notes.append(f"attribute head names: {', '.join(f'{o} -> {n}' for o, n in MILVLG_ATTRIBUTE_NAMES.items())}")
    for part in ("weight", "bias"):
        key = f"{RPN_PREFIX}objectness_logits.{part}"
        if key in native and native[key].shape[0] == 2 * spec.num_anchors:
            background, foreground = native[key].chunk(2)
            native[key] = foreground - background  # softmax pair -> one equivalent sigmoid logit
        box_key = f"{BOX_PREFIX}bbox_pred.{part}"
        if box_key in native and native[box_key].shape[0] == 4 * (spec.num_classes + 1):
            native[box_key] = native[box_key][4:]  # the background row is never used
    notes.append(f"objectness: {2 * spec.num_anchors} softmax channels (background, object) -> "
                 f"{spec.num_anchors} sigmoid logits (object - background)")
    notes.append(f"box regression: background row dropped ({4 * (spec.num_classes + 1)} -> {4 * spec.num_classes}), "
                 "Caffe's units kept")
    _rpn_to_native(native, spec, "milvlg", notes)
    return ConvertedWeights(native, "milvlg", notes)


def _native_to_airsplay(native: StateDict, spec: BackboneSpec, cell_anchors: bool) -> StateDict:
    published = dict(native)
    for key in BACKGROUND_LAST_KEYS:
        if BOX_PREFIX + key in published:
            published[BOX_PREFIX + key] = torch.cat([published[BOX_PREFIX + key][1:], published[BOX_PREFIX + key][:1]])
    _scale_box_rows(published, spec, 1.0)
    _rpn_from_native(published, spec, "airsplay", cell_anchors)
    return published


def _native_to_milvlg(native: StateDict, spec: BackboneSpec, cell_anchors: bool, seed: int = 0) -> StateDict:
    """Caffe layout; the free background objectness logit and background box row are seeded noise."""
    generator = torch.Generator().manual_seed(seed)
    published = dict(native)
    for old, new in MILVLG_ATTRIBUTE_NAMES.items():
        for part in ("weight", "bias"):
            if BOX_PREFIX + f"{new}.{part}" in published:
                published[BOX_PREFIX + f"{old}.{part}"] = published.pop(BOX_PREFIX + f"{new}.{part}")
    _rpn_from_native(published, spec, "milvlg", cell_anchors)
    for part in ("weight", "bias"):
        key = f"{RPN_PREFIX}objectness_logits.{part}"
        background = torch.randn(published[key].shape, generator=generator) * 0.01
        published[key] = torch.cat([background, background + published[key]])
        box_key = f"{BOX_PREFIX}bbox_pred.{part}"
        box = published[box_key]
        published[box_key] = torch.cat([torch.randn((4, *box.shape[1:]), generator=generator) * 0.001, box])
    return published


TO_NATIVE: dict[str, Callable[[StateDict, BackboneSpec], ConvertedWeights]] = {
    "airsplay": _airsplay_to_native,
    "milvlg": _milvlg_to_native,
}
FROM_NATIVE: dict[str, Callable[[StateDict, BackboneSpec, bool], StateDict]] = {
    "airsplay": _native_to_airsplay,
    "milvlg": _native_to_milvlg,
}


def _attribute_note(native: StateDict) -> str:
    shapes = {name: tuple(native[BOX_PREFIX + name + ".weight"].shape)
              for name in ATTRIBUTE_MODULES if BOX_PREFIX + name + ".weight" in native}
    if not shapes:
        return "attribute head: absent: regions are stored with attr_ids 0 and attr_conf 0"
    return "attribute head: present (" + ", ".join(f"{name} {shape}" for name, shape in shapes.items()) + ")"


def _fill_identity_bn_stats(state: StateDict) -> int:
    """Caffe-converted frozen norms may carry only scale and shift: give them mean 0, var 1."""
    filled = 0
    for key in [k for k in state if k.endswith(".norm.weight")]:
        prefix = key[: -len("weight")]
        if prefix + "bias" in state and not any(prefix + stat in state for stat in ("running_mean", "running_var")):
            state[prefix + "running_mean"] = torch.zeros_like(state[key])
            state[prefix + "running_var"] = torch.ones_like(state[key])
            filled += 1
    return filled


def to_native(state: StateDict, weights_format: str, spec: BackboneSpec) -> ConvertedWeights:
    """Convert a published state dict (format "auto": detected) into this detector's names and layout.

    Raises LayoutError when the file's cell anchors are not its format's anchors.
    """
    resolved = detect_format(state) if weights_format == "auto" else weights_format
    converted = TO_NATIVE[resolved](state, spec)
    converted.notes.insert(0, f"format: {resolved}" + (" (detected)" if weights_format == "auto" else ""))
    converted.notes.append(_attribute_note(converted.native))
    filled = _fill_identity_bn_stats(converted.native)
    if filled:
        converted.notes.append(f"frozen norms: {filled} with scale and shift only, given mean 0 and variance 1")
    return converted


def to_published(native: StateDict, weights_format: str, spec: BackboneSpec,
                 *, cell_anchors: bool = False) -> StateDict:
    """This detector's state dict in a published layout (to write files in that exact format).

    `cell_anchors` adds detectron2's anchor buffer as the format's own code would save it.
    """
    return FROM_NATIVE[weights_format]({k: v.detach().cpu() for k, v in native.items()}, spec, cell_anchors)
