"""The detector's two heavy parts on ONNX Runtime's CPU kernels: the ResNet body (stem .. res4) and res5.

On an AVX2 CPU ONNX Runtime ran both faster than eager PyTorch's oneDNN kernels, to float32 rounding
(README, "Extraction speed"), so `--runtime onnxruntime` offers it; the RPN, ROI pooling, the class,
box and attribute heads and region selection stay in PyTorch. Both graphs are exported from the
detector's current weights (norms folded) into memory when it first runs, never cached on disk, so a
session cannot outlive the weights it was made from (the detector drops it when weights are loaded).
The body runs image by image at each image's own size, which gives what the padded batch gives
(backbone.py zeroes padding before every conv), zero-padded to the batch's feature size.

With int8 calibration photos (ExtractorConfig.int8_calibration) res5 is quantized statically by
onnxruntime.quantization: int8 weights per output channel, uint8 activations whose ranges are the
minimum and maximum over the calibration photos' pooled proposals, run by the quantized CPU kernels.
"""
from __future__ import annotations

import io
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from extractors.backbone import ResNetC4, Sizes
from extractors.roi_heads import Res5ROIHeads, res5_spatial_mean

log = logging.getLogger(__name__)
# ONNX opset of the exported graphs: every op they use (Conv, MaxPool with ceil_mode, Relu, Add,
# ReduceMean) is in it, and the pinned onnxruntime runs it.
OPSET = 17


class _BodyGraph(nn.Module):
    """stem .. res4 of one unpadded image: (1, 3, h, w) -> (1, C4, h', w')."""

    def __init__(self, body: ResNetC4) -> None:
        super().__init__()
        self.body = body

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x, _ = self.body.stem(image, None)
        for stage in (self.body.res2, self.body.res3, self.body.res4):
            x, _ = stage(x, None)
        return x


class _Res5MeanGraph(nn.Module):
    """res5 and the mean over space, as the box head computes them: (n, C4, P, P) -> (n, D)."""

    def __init__(self, heads: Res5ROIHeads) -> None:
        super().__init__()
        self.res5 = heads.res5

    def forward(self, pooled_rois: torch.Tensor) -> torch.Tensor:
        return res5_spatial_mean(self.res5, pooled_rois)


def _export(graph: nn.Module, example: torch.Tensor, dynamic_axes: dict[int, str]) -> bytes:
    """The graph as ONNX bytes, by the TorchScript exporter: torch.export (dynamo=True) cannot express the
    stem's ceil-mode pool over a symbolic image size (tried with the pinned torch 2.14.1), so the exporter
    PyTorch now calls legacy is the one that exports this graph with dynamic height and width."""
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that it is legacy, said by torch.onnx's own calls
        torch.onnx.export(graph, (example,), buffer, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": dynamic_axes}, opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def _session(model: bytes, threads: int) -> onnxruntime.InferenceSession:
    """A session on ONNX Runtime's CPU kernels, all graph optimisations, `threads` intra-op threads and no
    inter-op pool (the graphs are one chain of convolutions)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class _PooledProposals(CalibrationDataReader):
    """The calibration inputs of res5, one pass at a time, so only one photo's proposals are in memory."""

    def __init__(self, pooled: Iterable[np.ndarray]) -> None:
        self._left = iter(pooled)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        return next(({"x": array} for array in self._left), None)


def _quantize(graph: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """A float32 graph of one input `x` in int8 (QOperator kernels, int8 weights per output channel, uint8
    activations with MinMax ranges over the `calibration` inputs). onnxruntime.quantization works on files,
    so the graph passes through a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="int8-") as folder:
        plain, prepared, quantized = (Path(folder) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        plain.write_bytes(graph)
        quant_pre_process(plain, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, quantized, _PooledProposals(calibration), quant_format=QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return quantized.read_bytes()


class OnnxParts:
    """ONNX Runtime sessions for the body and res5 of one detector, on `threads` intra-op threads.

    `res5_graph`: res5 as made earlier by `quantize_res5` (int8); default: exported in float32 from `heads`.
    """

    def __init__(self, body: ResNetC4, heads: Res5ROIHeads, threads: int, res5_graph: Optional[bytes] = None) -> None:
        started = time.perf_counter()
        self.threads = threads
        self._body = body
        channels, resolution = body.out_channels, heads.pooler_resolution
        body_graph = _export(_BodyGraph(body), torch.zeros(1, 3, 64, 64), {2: "h", 3: "w"})
        self._res5_graph = res5_graph or _export(
            _Res5MeanGraph(heads), torch.zeros(2, channels, resolution, resolution), {0: "n"})
        self._body_session = _session(body_graph, threads)
        self._res5_session = _session(self._res5_graph, threads)
        log.info("body and res5 exported to ONNX Runtime %s in %.1f s (%d threads)", onnxruntime.__version__,
                 time.perf_counter() - started, threads)

    def quantize_res5(self, calibration: Iterable[np.ndarray]) -> bytes:
        """Run res5 in int8 from now on, with ranges from `calibration` (pooled proposals (n, C4, P, P));
        returns the int8 graph, for sessions on other thread counts."""
        started = time.perf_counter()
        self._res5_graph = _quantize(self._res5_graph, calibration)
        self._res5_session = _session(self._res5_graph, self.threads)
        log.info("res5 calibrated and quantized to int8 in %.1f s", time.perf_counter() - started)
        return self._res5_graph

    def body(self, images: torch.Tensor, image_sizes: Sizes) -> tuple[torch.Tensor, Sizes]:
        """What ResNetC4.forward returns for this zero-padded batch: res4 features (padding zero) and valid sizes."""
        sizes = [tuple(size) for size in image_sizes]
        feature_sizes = self._body.output_sizes(sizes)
        padded_h, padded_w = self._body.output_sizes([(images.shape[2], images.shape[3])])[0]
        features = images.new_zeros((len(sizes), self._body.out_channels, padded_h, padded_w))
        for index, ((h, w), (feature_h, feature_w)) in enumerate(zip(sizes, feature_sizes)):
            image = images[index:index + 1, :, :h, :w].float().contiguous()
            out = self._body_session.run(None, {"x": image.numpy()})[0]
            if out.shape[2:] != (feature_h, feature_w):
                raise RuntimeError(f"ONNX Runtime body gave {out.shape[2:]} for a {h}x{w} image; "
                                   f"expected {(feature_h, feature_w)}")
            features[index, :, :feature_h, :feature_w] = torch.from_numpy(out[0])
        return features, feature_sizes

    def res5_mean(self, pooled_rois: torch.Tensor) -> torch.Tensor:
        """Res5ROIHeads.res5_mean on ONNX Runtime: (n, C4, P, P) -> (n, D) float32."""
        out = self._res5_session.run(None, {"x": pooled_rois.float().contiguous().numpy()})[0]
        return torch.from_numpy(out)
