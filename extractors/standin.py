"""Stand-in weights: the published network with seeded weights whose activations look like a trained model's.

Speed and precision are measured on the R101-C4-VG network, whose published files cannot be downloaded
on the development machines. A plain seeded init is a poor stand-in for judging reduced precision: its
frozen norms are the identity, so activations drift in scale through 101 layers, and every class scores
about the same, so region selection turns on noise. `calibrate_standin` fixes both from one real photo:
each frozen norm gets the statistics of what reaches it (every channel mean 0, variance 1; the last norm
of each residual branch scaled to `residual_gain`, as trained ResNets have it), and the heads' outputs
get a trained model's spread (a few classes stand out per proposal, proposals ranked decisively, small
box corrections). The weights stay in the published layout (`detector.state_dict()`).
"""
from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from extractors.backbone import BasicBlock, BottleneckBlock, ConvNorm, fuse_norms
from extractors.detector import BottomUpDetector
from extractors.preprocess import ImageBatch

# Output spread (standard deviation) of each head after calibration.
HEAD_SPREAD = {"roi_heads.box_predictor.cls_score": 3.0, "roi_heads.box_predictor.bbox_pred": 0.1,
               "proposal_generator.rpn_head.objectness_logits": 2.0,
               "proposal_generator.rpn_head.anchor_deltas": 0.1}

CALIBRATION_PROPOSALS = 64


def _last_in_branch(detector: nn.Module) -> set[int]:
    """ids of the norms that end a residual branch (conv3 of a bottleneck, conv2 of a basic block)."""
    last = set()
    for module in detector.modules():
        if isinstance(module, BottleneckBlock):
            last.add(id(module.conv3))
        elif isinstance(module, BasicBlock):
            last.add(id(module.conv2))
    return last


def _normalise_input(gain: float, norm: nn.Module, inputs: tuple[torch.Tensor]) -> None:
    """Forward pre-hook of a conv's norm: set its statistics from the (1, C, H, W) conv output it receives."""
    x = inputs[0].float()
    norm.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    norm.running_var.copy_(x.var(dim=(0, 2, 3)).clamp_min(1e-6) - norm.eps)
    norm.weight.fill_(gain)
    norm.bias.zero_()


def _calibrate_norms(detector: BottomUpDetector, batch: ImageBatch, residual_gain: float) -> None:
    last = _last_in_branch(detector)
    handles = []
    for module in detector.modules():
        if isinstance(module, ConvNorm):
            module.unfuse()
            gain = residual_gain if id(module) in last else 1.0
            handles.append(module.norm.register_forward_pre_hook(functools.partial(_normalise_input, gain)))
    try:
        detector(batch)  # every norm is set, in execution order, before it runs
    finally:
        for handle in handles:
            handle.remove()


def _output_statistics(output: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-channel mean (channels on dim 1) and the spread left after removing it."""
    channels_last = output.float().transpose(0, 1).reshape(output.shape[1], -1)
    mean = channels_last.mean(dim=1)
    return mean, float((channels_last - mean[:, None]).std())


def _spread_heads(detector: BottomUpDetector, batch: ImageBatch) -> None:
    """Centre each head's outputs per channel and scale them to HEAD_SPREAD (a trained model's spread)."""
    modules = dict(detector.named_modules())
    statistics: dict[str, tuple[torch.Tensor, float]] = {}
    handles = [modules[name].register_forward_hook(
        lambda _module, _inputs, output, name=name: statistics.__setitem__(name, _output_statistics(output)))
        for name in HEAD_SPREAD]
    try:
        detector(batch)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        for name, (mean, spread) in statistics.items():  # bbox_pred runs in the airsplay recipe only
            target = HEAD_SPREAD[name]
            factor = target / max(spread, 1e-12)
            modules[name].weight.mul_(factor)
            modules[name].bias.sub_(mean).mul_(factor)


def calibrate_standin(detector: BottomUpDetector, batch: ImageBatch, residual_gain: float = 0.25) -> BottomUpDetector:
    """Calibrate a seeded detector in place on one photo (`batch` of one image); returns it, norms fused.

    The res5 norms and the box head see CALIBRATION_PROPOSALS proposals at most (enough statistics,
    a fraction of the time of 300).
    """
    if len(batch.image_sizes) != 1:
        raise ValueError("calibrate_standin needs a batch of exactly one image (padding would skew the statistics)")
    rpn = detector.proposal_generator
    settings = rpn.settings
    rpn.settings = dataclasses.replace(settings, post_nms_topk=min(settings.post_nms_topk, CALIBRATION_PROPOSALS))
    try:
        _calibrate_norms(detector, batch, residual_gain)
        _spread_heads(detector, batch)
    finally:
        rpn.settings = settings
    return fuse_norms(detector)
