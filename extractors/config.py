"""Extractor settings, defined once, and the registry of named backbone presets.

The Luigi tasks generate their parameters from `ExtractorConfig`; model code only sees a
`BackboneSpec` (looked up by name) plus the few inference settings it needs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from extractors.calibration import calibration_digest
from extractors.precision import resolve_amp_dtype
from pipeline.devices import resolve_device

WEIGHT_FORMATS = ("auto", "airsplay", "milvlg")
# How the detector is fetched and run, not what it computes: left out of a store's identity, so the same
# weights by another path, or another batch size or device, extend the same store.
# batch_size and roi_batch_size only split the work, and runtime only picks whose float32 kernels run it: the same
# regions, features equal to float32 rounding (tested). int8 calibration photos count by content instead (below).
RUNTIME_FIELDS = ("weights", "weights_sha256", "cache_dir", "batch_size", "roi_batch_size", "device", "runtime",
                  "int8_calibration")
# How proposals, boxes and regions are computed around the same network (see README, "Recipes"):
# caffe = bottom-up-attention's generate_tsv.py (and MILVLG); airsplay = py-bottom-up-attention's
# detectron2 pipeline (demo/detectron2_mscoco_proposal_maxnms.py, attributes as in its attr demo).
RECIPES = ("caffe", "airsplay")
AMP_DTYPES = ("", "fp16", "bf16", "auto")
# Whose kernels run the ResNet body and res5: PyTorch's, or ONNX Runtime's (CPU, float32; extractors.onnx_runtime).
RUNTIMES = ("torch", "onnxruntime")
# Proposals per res5 pass on the CPU when roi_batch_size is 0: the activations of a few proposals stay in
# the cache (bench_extract.py --stage speed: 300 at once is slower by about a third).
CPU_ROI_BATCH = 16
# On a GPU, as many as fit comfortably: 1024 proposals are ~1.6 GB of float32 res5 activations per tensor.
GPU_ROI_BATCH = 1024
CAFFE_PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)


@dataclass(frozen=True)
class BackboneSpec:
    """Shape of one Faster R-CNN C4 model: ResNet body up to res4, res5 as the box head."""

    depth: int
    block: str  # "bottleneck" (R50/R101) or "basic" (R18)
    num_classes: int = 1600  # foreground object classes (objects_vocab.txt lines)
    num_attributes: int = 400  # attributes (attributes_vocab.txt lines)
    res5_dilation: int = 2  # the Caffe model keeps res5 at 14x14 with dilation 2
    anchor_scales: tuple[int, ...] = (4, 8, 16, 32)  # times the 16-pixel base anchor
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 512
    pooler_resolution: int = 14
    attr_embed_dim: int = 256
    attr_hidden_dim: int = 512
    short_side: int = 600  # test-time resize of this preset, unless ExtractorConfig sets its own
    max_side: int = 1000

    @property
    def stage_blocks(self) -> tuple[int, int, int, int]:
        blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
        return blocks[self.depth]

    @property
    def res2_channels(self) -> int:
        return 256 if self.block == "bottleneck" else 64

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled region feature (res5 output): 2048 or 512."""
        return self.res2_channels * 8

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios)


PRESETS: dict[str, BackboneSpec] = {
    "R101-C4-VG": BackboneSpec(depth=101, block="bottleneck"),
    "R50-C4": BackboneSpec(depth=50, block="bottleneck"),
    "R18-C4": BackboneSpec(depth=18, block="basic"),
    # Small and fast for tests and the demo (7x7 ROI pool, res5 at 4x4); random-init by default.
    "R18-C4-demo": BackboneSpec(depth=18, block="basic", res5_dilation=1, pooler_resolution=7, short_side=128,
                                max_side=160),
}


@dataclass(frozen=True)
class ExtractorConfig:
    """Everything that decides which regions and features come out of an image."""

    backbone: str = field(default="R101-C4-VG", metadata={
        "help": "Backbone preset: " + " | ".join(PRESETS) + ".", "choices": tuple(PRESETS)})
    weights: str = field(default="", metadata={
        "help": "Weights file path or URL; empty = seeded random init (tests, demo)."})
    weights_sha256: str = field(default="", metadata={
        "help": "Expected SHA-256 of the weights file; empty = not checked."})
    weights_format: str = field(default="auto", metadata={
        "help": "Weights layout: auto | airsplay (.pkl) | milvlg (.pth).", "choices": WEIGHT_FORMATS})
    cache_dir: str = field(default="", metadata={
        "help": "Where downloaded weights are kept; empty = ~/.cache/scan-pipeline/weights."})
    recipe: str = field(default="caffe", metadata={
        "help": "Pipeline around the network: caffe (generate_tsv.py, MILVLG: the SCAN features) | airsplay "
                "(py-bottom-up-attention, LXMERT-style).", "choices": RECIPES})
    min_boxes: int = field(default=36, metadata={"help": "Fewest regions kept per image."})
    max_boxes: int = field(default=36, metadata={"help": "Most regions kept per image."})
    conf_thresh: float = field(default=0.2, metadata={
        "help": "Keep regions whose best class score after per-class NMS reaches this (caffe recipe; airsplay's "
                "script ignores its score threshold)."})
    nms_thresh: float = field(default=0.3, metadata={
        "help": "IoU threshold of the per-class NMS in region selection (caffe); the first of airsplay's rising "
                "thresholds (+0.1 until min_boxes survive)."})
    rpn_pre_nms_topk: int = field(default=6000, metadata={"help": "RPN proposals kept before NMS."})
    rpn_post_nms_topk: int = field(default=300, metadata={"help": "RPN proposals kept after NMS."})
    rpn_nms_thresh: float = field(default=0.7, metadata={"help": "IoU threshold of the RPN NMS."})
    rpn_min_size: int = field(default=16, metadata={
        "help": "Drop proposals smaller than this (original-image pixels; caffe recipe, airsplay keeps every "
                "non-empty box)."})
    test_short_side: Optional[int] = field(default=None, metadata={
        "help": "Resize the shorter image side to this many pixels; default: the backbone preset's (600; demo 128)."})
    test_max_side: Optional[int] = field(default=None, metadata={
        "help": "Cap the longer image side at this many pixels; default: the backbone preset's (1000; demo 160)."})
    batch_size: int = field(default=1, metadata={"help": "Images per forward pass (zero-padded to the largest)."})
    roi_batch_size: int = field(default=0, metadata={
        "help": f"Proposals per pass through the res5 box head; 0 = {CPU_ROI_BATCH} on the CPU (cache-sized), "
                f"{GPU_ROI_BATCH} on a GPU. Changes features only at float32 rounding, like batch_size."})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N."})
    amp_dtype: str = field(default="", metadata={
        "help": "Reduced precision: '' (float32) | bf16 (GPU, or a CPU with AVX-512 BF16 / AMX) | fp16 (GPU) | "
                "auto (bf16 where the hardware has it, else float32). Resolved when the config is made and "
                "recorded as resolved, so stores of different precision never mix.", "choices": AMP_DTYPES})
    runtime: str = field(default="torch", metadata={
        "help": "Kernels of the ResNet body and res5: torch | onnxruntime (CPU, float32: faster than PyTorch's on "
                "the AVX2 CPU measured; exported from the weights when the detector first runs). The same regions, "
                "features equal to float32 rounding.", "choices": RUNTIMES})
    int8_calibration: str = field(default="", metadata={
        "help": "res5 in int8 (runtime=onnxruntime only): a folder of calibration photos from the images to "
                "extract, whose proposals set each activation's int8 range; empty = float32. The fastest CPU "
                "setting measured, but below the box guard on stand-in weights (README, 'Extraction speed'). "
                "The store records the photos by content."})
    seed: int = field(default=0, metadata={"help": "Seed of the random init used when no weights are given."})

    def __post_init__(self) -> None:
        if self.backbone not in PRESETS:
            raise ValueError(f"backbone={self.backbone!r}; expected one of {', '.join(PRESETS)}")
        if self.test_short_side is None:  # frozen: fill the preset's resize in once, so asdict() records it
            object.__setattr__(self, "test_short_side", self.spec.short_side)
        if self.test_max_side is None:
            object.__setattr__(self, "test_max_side", self.spec.max_side)
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe={self.recipe!r}; expected one of {', '.join(RECIPES)}")
        if self.weights_format not in WEIGHT_FORMATS:
            raise ValueError(f"weights_format={self.weights_format!r}; expected one of {', '.join(WEIGHT_FORMATS)}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype={self.amp_dtype!r}; expected '', fp16, bf16 or auto")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime={self.runtime!r}; expected one of {', '.join(RUNTIMES)}")
        device = resolve_device(self.device)
        if self.runtime == "onnxruntime":
            if device.type != "cpu":
                raise ValueError(f"runtime='onnxruntime' runs on the CPU, not on device={self.device!r} "
                                 f"(resolved to {device}); use device=cpu, or runtime=torch on a GPU")
            if self.amp_dtype in ("fp16", "bf16"):
                raise ValueError(f"runtime='onnxruntime' runs in float32, not amp_dtype={self.amp_dtype!r}; "
                                 "use amp_dtype='' (or auto), or runtime=torch for reduced precision")
            object.__setattr__(self, "amp_dtype", "")  # auto: the one precision this runtime computes
        elif self.int8_calibration:
            raise ValueError(f"int8_calibration={self.int8_calibration!r} quantizes res5 for ONNX Runtime; add "
                             f"runtime='onnxruntime' (CPU), or leave it empty with runtime={self.runtime!r}")
        object.__setattr__(self, "amp_dtype", resolve_amp_dtype(self.amp_dtype, device))
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError(f"min_boxes={self.min_boxes}, max_boxes={self.max_boxes}; "
                             "need 1 <= min_boxes <= max_boxes")
        if self.test_short_side < 1 or self.test_max_side < self.test_short_side:
            raise ValueError(f"test_short_side={self.test_short_side}, test_max_side={self.test_max_side}; "
                             "need 1 <= short <= max")
        if self.batch_size < 1 or self.roi_batch_size < 0:
            raise ValueError(f"batch_size={self.batch_size}, roi_batch_size={self.roi_batch_size}; "
                             "expected >= 1 and >= 0")

    @property
    def spec(self) -> BackboneSpec:
        return PRESETS[self.backbone]

    def feature_settings(self) -> dict[str, object]:
        """The settings that decide the features (weights count by their sha256, recorded beside these;
        int8 calibration photos by their digest, a key float32 stores do not have)."""
        settings = {name: value for name, value in dataclasses.asdict(self).items() if name not in RUNTIME_FIELDS}
        if self.int8_calibration:
            settings["int8_calibration_sha256"] = calibration_digest(self.int8_calibration)
        return settings
