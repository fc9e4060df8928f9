"""Stage `speed` of bench_extract.py: the R101-C4-VG detector at the standard size, today's float32 path
against each faster setting, interleaved on the same real photos in one run, with the quality of each.

Weights: the published layout with seeded stand-in values (extractors.standin, calibrated on the first
photo and cached), since the published files cannot be downloaded here. Every variant gets the same
weights; the reference is the float32 path as it was before issue 16 (frozen norms as separate passes,
all proposals through res5 at once). Times are CPU seconds of this process (steadier than wall time on a
shared machine) and wall seconds; ratios are per round, over the same photos, and the spread over rounds
is printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from extractors.backbone import ConvNorm, fuse_norms
from extractors.config import ExtractorConfig
from extractors.detector import BottomUpDetector, build_detector
from extractors.images import decode_image
from extractors.precision import cpu_has_native_bf16
from extractors.preprocess import ImageBatch, collate_images, prepare_image
from extractors.quality import compare_runs
from extractors.standin import calibrate_standin
from extractors.timing import StageClock
from pipeline.store import RegionRecord, ShardWriter

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
PHOTO_DIRS = (SHARED / "f30k_mini" / "images", SHARED / "flickr8k" / "images")
STANDIN_CACHE = Path.home() / ".cache" / "scan-pipeline" / "standin"
STAGES = ("decode", "backbone", "rpn", "res5 head", "selection", "write")
ALL_AT_ONCE = 1_000_000  # roi_batch_size that sends every proposal through res5 in one pass (the old path)


@dataclass(frozen=True)
class Variant:
    """One setting to time: config overrides and a change to the built detector."""

    name: str
    overrides: dict
    prepare: Callable[[BottomUpDetector], BottomUpDetector] = fuse_norms


def unfused(detector: BottomUpDetector) -> BottomUpDetector:
    for module in detector.modules():
        if isinstance(module, ConvNorm):
            module.unfuse()
    return detector


def channels_last(detector: BottomUpDetector) -> BottomUpDetector:
    return fuse_norms(detector).to(memory_format=torch.channels_last)


def compiled_res5(detector: BottomUpDetector) -> BottomUpDetector:
    fuse_norms(detector).roi_heads.res5 = torch.compile(detector.roi_heads.res5)
    return detector


def openvino_res5(detector: BottomUpDetector) -> BottomUpDetector:
    """res5 run by OpenVINO's CPU plugin in float32 (pip install openvino; not a dependency of the project)."""
    import openvino

    fuse_norms(detector)
    spec = detector.config.spec
    example = torch.zeros(16, spec.res2_channels * 4, spec.pooler_resolution, spec.pooler_resolution)
    model = openvino.convert_model(_Res5Only(detector.roi_heads.res5), example_input=example,
                                   input=[(-1, *example.shape[1:])])
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                           "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    detector.roi_heads.res5 = _OpenVINOStage(compiled)
    return detector


class _Res5Only(torch.nn.Module):
    def __init__(self, stage: torch.nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x)[0]


def perturbed_res5(scale: float) -> Callable[[BottomUpDetector], BottomUpDetector]:
    """The float32 default with every res5 output multiplied by (1 + scale * N(0, 1)), seeded: a control that
    shows how many selected boxes a change of a known, tiny size re-ranks on these weights."""

    def prepare(detector: BottomUpDetector) -> BottomUpDetector:
        fuse_norms(detector).roi_heads.res5 = _Perturbed(detector.roi_heads.res5, scale)
        return detector

    return prepare


class _Perturbed(torch.nn.Module):
    def __init__(self, stage: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.stage = stage
        self.scale = scale
        self.noise = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor, sizes=None):
        out, out_sizes = self.stage(x, sizes)
        return out * (1 + self.scale * torch.randn(out.shape, generator=self.noise)), out_sizes


class _OpenVINOStage(torch.nn.Module):
    def __init__(self, compiled) -> None:
        super().__init__()
        self.request = compiled.create_infer_request()

    def forward(self, x: torch.Tensor, sizes=None) -> tuple[torch.Tensor, None]:
        return torch.from_numpy(self.request.infer({0: x.numpy()})[0].copy()), None


def variants(args: argparse.Namespace, calibration: Path) -> list[Variant]:
    chosen = [Variant("float32 before issue 16 (norms as passes, 300 proposals at once)",
                      {"roi_batch_size": ALL_AT_ONCE}, unfused),
              Variant("float32, norms folded, 300 at once", {"roi_batch_size": ALL_AT_ONCE}),
              Variant("float32, norms folded, 16 per res5 pass (default)", {}),
              Variant("  + channels_last", {}, channels_last),
              Variant("float32 default on ONNX Runtime (body + res5)", {"runtime": "onnxruntime"})]
    if args.with_bf16 or cpu_has_native_bf16():
        chosen.append(Variant("bf16 autocast, norms folded, 16 per pass", {"amp_dtype": "bf16"}))
    if args.compile:
        chosen.append(Variant("float32 default + torch.compile(res5)", {}, compiled_res5))
    if args.openvino:
        chosen.append(Variant("float32 default, res5 on OpenVINO", {}, openvino_res5))
    if args.int8:
        chosen.append(Variant("int8 res5 on ONNX Runtime (--int8-calibration)", int8_overrides(calibration)))
    return chosen


def photos(count: int, folders: tuple[Path, ...] = PHOTO_DIRS) -> list[Path]:
    """The first `count` JPEG photos of `folders`, in order (the shared data's f30k_mini, then Flickr8k)."""
    paths = [path for folder in folders for path in sorted(Path(folder).glob("*.jpg"))][:count]
    if len(paths) < count:
        raise SystemExit(f"need {count} .jpg photos in {', '.join(str(Path(d).resolve()) for d in folders)} "
                         f"(found {len(paths)})")
    return paths


def calibration_folder(folder: Path, measured: int, count: int) -> Path:
    """int8 calibration photos, linked into `folder`: the stand-in's calibration photo, then `count - 1` after the
    `measured` ones (never a measured photo)."""
    chosen = photos(measured + count)
    for path in [chosen[0], *chosen[measured + 1:]]:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def int8_overrides(calibration: Path) -> dict:
    """The extractor's int8 option: res5 in int8 on ONNX Runtime (the body float32 there), calibrated on the
    photos of `calibration` when the detector first runs."""
    return {"runtime": "onnxruntime", "int8_calibration": str(calibration)}


def standin_state(config: ExtractorConfig, photo: Path) -> dict[str, torch.Tensor]:
    """Calibrated stand-in weights for `config.backbone`, cached by backbone, seed and photo content."""
    key = hashlib.sha256(photo.read_bytes()).hexdigest()[:12]
    path = STANDIN_CACHE / f"{config.backbone}-{config.recipe}-seed{config.seed}-{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    print(f"calibrating stand-in weights on {photo.name} (cached in {path})", flush=True)
    detector = build_detector(config)
    calibrate_standin(detector, collate_images([prepare_image(decode_image(photo), config)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(detector.state_dict(), path)
    return detector.state_dict()


def build_variant(base: ExtractorConfig, variant: Variant, state: dict) -> BottomUpDetector:
    config = dataclasses.replace(base, **variant.overrides)
    detector = BottomUpDetector(config)
    detector.load_state_dict(state)
    return variant.prepare(detector.eval())


def timed(detector: BottomUpDetector, batch: ImageBatch, clock: StageClock) -> tuple[float, float, list]:
    wall, cpu = time.perf_counter(), time.process_time()
    outputs = detector(batch, clock=clock)
    return time.perf_counter() - wall, time.process_time() - cpu, outputs


def decode_and_write(config: ExtractorConfig, paths: list[Path], outputs: list, clock: StageClock) -> None:
    """The stages outside the network: decoding and resizing each photo, writing its regions to a shard."""
    prepared = []
    for path in paths:
        with clock.stage("decode"):
            prepared.append(prepare_image(decode_image(path), config))
    with tempfile.TemporaryDirectory() as folder, clock.stage("write"):
        with ShardWriter(Path(folder) / "shard-00000.h5", max_boxes=config.max_boxes,
                         feature_dim=config.spec.feature_dim) as writer:
            for path, image, output in zip(paths, prepared, outputs):
                writer.append(RegionRecord(path.stem, output.features, output.boxes, output.object_ids,
                                           output.object_conf, output.attr_ids, output.attr_conf, image.original_hw),
                              relpath=path.name, sha256="0" * 64)


def stage_speed(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="int8-calibration-") as folder:
        measure_speed(args, Path(folder))


def measure_speed(args: argparse.Namespace, calibration_dir: Path) -> None:
    count, rounds = (1, 1) if args.quick else (args.photos, args.rounds)
    paths_all = photos(count + 1)
    base = ExtractorConfig(backbone=args.speed_backbone, device="cpu", min_boxes=36, max_boxes=36)
    state = standin_state(base, paths_all[0])
    paths = paths_all[1:]  # measured on other photos than the one the stand-in was calibrated on
    batches = [collate_images([prepare_image(decode_image(path), base)]) for path in paths]
    chosen = variants(args, calibration_folder(calibration_dir, count, args.int8_calibration_photos))
    detectors = [build_variant(base, variant, state) for variant in chosen]
    print(f"[speed] {base.backbone} stand-in weights, {base.test_short_side}/{base.test_max_side} px, "
          f"{base.rpn_post_nms_topk} proposals, {base.max_boxes} boxes, {count} photos, {rounds} round(s), "
          f"{torch.get_num_threads()} torch threads, CPU {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_has_native_bf16()}", flush=True)
    # One untimed call per setting on the stand-in's calibration photo: one-time costs (oneDNN primitives, ONNX
    # export, int8 calibration, torch.compile) are printed apart, and the rounds time each setting as a shard's later
    # images see it.
    warm_up = collate_images([prepare_image(decode_image(paths_all[0]), base)])
    first_calls = [timed(detector, warm_up, StageClock())[0] for detector in detectors]
    for variant, seconds in zip(chosen, first_calls):
        print(f"  first call (untimed warm-up) {variant.name}: {seconds:.1f} s wall", flush=True)
    clocks = [StageClock() for _ in chosen]
    walls = np.zeros((rounds, len(chosen)))
    cpus = np.zeros((rounds, len(chosen)))
    outputs: list[list] = [[] for _ in chosen]
    for round_index in range(rounds):
        for batch in batches:
            for index, detector in enumerate(detectors):  # interleaved: load from other jobs hits all alike
                wall, cpu, result = timed(detector, batch, clocks[index])
                walls[round_index, index] += wall
                cpus[round_index, index] += cpu
                if round_index == 0:
                    outputs[index] += result
                print(f"  round {round_index + 1} {chosen[index].name}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    decode_and_write(base, paths, outputs[2], clocks[2])
    report(chosen, walls, cpus, outputs, clocks, count, rounds, first_calls)


def report(chosen: list[Variant], walls: np.ndarray, cpus: np.ndarray, outputs: list, clocks: list[StageClock],
           count: int, rounds: int, first_calls: list[float]) -> None:
    print(f"\n{'setting':<60} {'images/s (wall)':>15} {'x before (wall)':>16} {'CPU s/image':>12} "
          f"{'x before (CPU)':>16} {'first call s':>13}  quality vs float32 before")
    for index, variant in enumerate(chosen):
        columns = []
        for seconds in (walls, cpus):
            ratios = seconds[:, 0] / seconds[:, index]
            columns.append(f"{ratios.min():.2f}-{ratios.max():.2f}" if rounds > 1 else f"{ratios[0]:.2f}")
        print(f"{variant.name:<60} {count / walls[:, index].min():15.3f} {columns[0]:>16} "
              f"{cpus[:, index].min() / count:12.1f} {columns[1]:>16} {first_calls[index]:13.1f}  "
              f"{compare_runs(outputs[0], outputs[index])}")
    per_image = {name: clocks[2].cpu.get(name, 0.0) / (count if name in ("decode", "write") else count * rounds)
                 for name in STAGES}
    total = sum(per_image.values())
    print("\nper-stage CPU time of the default setting, per image (decode and write once per photo):")
    for name in STAGES:
        print(f"  {name:<10} {per_image[name]:8.3f} s  {100 * per_image[name] / total:5.1f}%")
    network_stages = [name for name in STAGES if name not in ("decode", "write")]
    network = sum(per_image[name] for name in network_stages)
    print(f"  outside the network (decode + write): {100 * (total / network - 1):+.2f}% of the bare forward")
    print("\nnetwork stages of every setting, CPU s per image:")
    print(f"  {'setting':<60} " + " ".join(f"{name:>10}" for name in network_stages))
    for variant, clock in zip(chosen, clocks):
        print(f"  {variant.name:<60} " + " ".join(f"{clock.cpu.get(name, 0.0) / (count * rounds):10.2f}"
                                                 for name in network_stages))


def quality_variant(args: argparse.Namespace, calibration_dir: Path) -> Variant:
    """The setting --quality-setting names (int8 calibrates only when chosen)."""
    if args.quality_setting == "int8":
        return Variant("int8 res5", int8_overrides(
            calibration_folder(calibration_dir, args.quality_photos, args.int8_calibration_photos)))
    if args.quality_setting == "perturbed":
        return Variant(f"float32, res5 output x (1 + {args.perturbation:g} N(0, 1))", {},
                       perturbed_res5(args.perturbation))
    return Variant("bf16 autocast", {"amp_dtype": "bf16"})


def stage_quality(args: argparse.Namespace) -> None:
    """A reduced-precision setting (bf16 autocast, or res5 in int8), or the perturbed float32 control, against
    the float32 default on the same photos: the quality guard and the time of each.

    Photo by photo, so a long run (bf16 is emulated, tens of times slower, on CPUs without bf16) reports as it goes.
    """
    with tempfile.TemporaryDirectory(prefix="int8-calibration-") as folder:
        measure_quality(args, Path(folder))


def measure_quality(args: argparse.Namespace, calibration_dir: Path) -> None:
    paths = photos(args.quality_photos + 1)
    base = ExtractorConfig(backbone=args.speed_backbone, device="cpu", min_boxes=36, max_boxes=36)
    state = standin_state(base, paths[0])
    reduced = quality_variant(args, calibration_dir)
    chosen = [Variant("float32 (default)", {}), reduced]
    detectors = [build_variant(base, variant, state) for variant in chosen]
    print(f"[quality] {base.backbone} stand-in weights, {base.test_short_side}/{base.test_max_side} px, "
          f"{base.rpn_post_nms_topk} proposals, {base.max_boxes} boxes, {torch.get_num_threads()} torch threads, "
          f"native bf16: {cpu_has_native_bf16()}", flush=True)
    outputs: list[list] = [[], []]
    for path in paths[1:]:
        batch = collate_images([prepare_image(decode_image(path), base)])
        seconds = []
        for index, detector in enumerate(detectors):
            wall, cpu, result = timed(detector, batch, StageClock())
            outputs[index] += result
            seconds.append(f"{chosen[index].name} {wall:.1f} s wall, {cpu:.1f} s CPU")
        print(f"  {path.name}: {'; '.join(seconds)}; {compare_runs(outputs[0][-1:], outputs[1][-1:])}", flush=True)
    print(f"{reduced.name} vs float32 over {len(paths) - 1} photos: {compare_runs(outputs[0], outputs[1])} "
          "(targets: >= 95% matched, mean cosine >= 0.995)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speed-backbone", default="R101-C4-VG", help="speed: backbone preset (stand-in weights).")
    parser.add_argument("--photos", type=int, default=3, help="speed: photos measured (f30k_mini, then Flickr8k).")
    parser.add_argument("--rounds", type=int, default=2, help="speed: interleaved rounds over all settings.")
    parser.add_argument("--with-bf16", action="store_true",
                        help="speed: add bf16 autocast even where the CPU has no bf16 instructions (its quality; "
                             "its speed there is oneDNN's emulation, far slower than float32).")
    parser.add_argument("--compile", action="store_true", help="speed: add torch.compile of the res5 head.")
    parser.add_argument("--openvino", action="store_true",
                        help="speed: add the res5 head on OpenVINO (pip install openvino).")
    parser.add_argument("--int8", action="store_true",
                        help="speed: add the extractor's int8 option (res5 in int8 on ONNX Runtime, calibrated on "
                             "the stand-in's calibration photo and --int8-calibration-photos - 1 more).")
    parser.add_argument("--int8-calibration-photos", type=int, default=1,
                        help="int8: photos whose proposals set the activation ranges: the stand-in's calibration "
                             "photo, then photos after the measured ones.")
    parser.add_argument("--quality-photos", type=int, default=2,
                        help="quality: photos compared with float32 (f30k_mini, then Flickr8k).")
    parser.add_argument("--quality-setting", choices=("bf16", "int8", "perturbed"), default="bf16",
                        help="quality: the setting compared with float32 (int8: res5 on ONNX Runtime; perturbed: "
                             "float32 with seeded relative noise of --perturbation on res5's output, a control).")
    parser.add_argument("--perturbation", type=float, default=1e-3,
                        help="quality, perturbed: the relative standard deviation of the noise.")
