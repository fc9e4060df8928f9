"""`python -m extractors <command>`: verify-weights, extract, verify (see each `--help`).

Every field of ExtractorConfig, StoreConfig, RunConfig and DaskConfig is a flag (pipeline.config_flags);
with `--dataset`, what is not set comes from that dataset's presets (pipeline.presets), exactly as in
the Luigi workflow.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from extractors.config import PRESETS, WEIGHT_FORMATS, ExtractorConfig
from extractors.extract import DaskConfig, RunConfig
from pipeline.config import DATASET_NAMES, DatasetConfig
from pipeline.config_flags import add_config_flags, config_from_args
from pipeline.errors import InputError
from pipeline.presets import presets_for
from pipeline.store import StoreConfig

# Flags whose names differ from their config field (short, as users type them).
FLAG_NAMES = {RunConfig: {"num_workers": "--workers"},
              DaskConfig: {"n_workers": "--dask-workers", "host": "--dask-host"}}


def run_verify_weights(args: argparse.Namespace) -> int:
    """Print what the conversion did and how the file's keys fit the preset; success only with zero problems."""
    from extractors.detector import BottomUpDetector
    from extractors.weights import compare_keys, convert_file, fetch_weights

    config = ExtractorConfig(backbone=args.backbone, weights_format=args.format)
    try:
        path = fetch_weights(args.path, sha256=args.sha256)
        converted = convert_file(path, args.format, config.spec)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = compare_keys(converted.native, BottomUpDetector(config, converted.with_attributes).state_dict())
    for note in converted.notes:
        print(note)
    print(f"missing: {len(report.missing)}")
    print(f"unexpected: {len(report.unexpected)}")
    print(f"shape-mismatched: {len(report.mismatched)}")
    for label, names in (("missing", report.missing), ("unexpected", report.unexpected),
                         ("mismatched", report.mismatched)):
        for name in names[: args.show]:
            print(f"  {label}: {name}")
    return 0 if report.ok else 1


def add_verify_weights(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify-weights", help="Check a published weights file against a backbone preset.")
    parser.add_argument("path", help="Weights file (.pkl airsplay or .pth milvlg) or URL.")
    parser.add_argument("--format", default="auto", choices=WEIGHT_FORMATS, help="Weights layout (default: detect).")
    parser.add_argument("--backbone", default="R101-C4-VG", choices=sorted(PRESETS),
                        help="Backbone preset to check against.")
    parser.add_argument("--sha256", default="", help="Expected SHA-256 of the file.")
    parser.add_argument("--show", type=int, default=10, help="List at most this many names per problem kind.")
    parser.set_defaults(handler=run_verify_weights)


def extraction_configs(args: argparse.Namespace) -> tuple[ExtractorConfig, StoreConfig, RunConfig, DaskConfig]:
    """The configs the command line asks for; `--dataset` brings its presets, as the workflow's tasks do."""
    presets = presets_for(args.dataset) if args.dataset else None
    return (config_from_args(args, ExtractorConfig, presets.extractor if presets else {}),
            config_from_args(args, StoreConfig, presets.store if presets else {}),
            config_from_args(args, RunConfig), config_from_args(args, DaskConfig))


def _images_and_boxes(args: argparse.Namespace, config: ExtractorConfig) -> tuple[list[Any], Optional[Path]]:
    """The images to extract and the given-boxes file, if any (a dataset's own, e.g. the demo's, by default)."""
    from extractors.loader import images_in_directory
    from extractors.weights import require_weights
    from pipeline.datasets import load_dataset, registered_config

    if args.images:
        return images_in_directory(args.images), args.boxes
    if presets_for(args.dataset).needs_weights:
        require_weights(config, args.dataset)
    dataset = load_dataset(registered_config(args.dataset, Path(args.data_root or DatasetConfig().data_root)))
    return list(dataset.images), args.boxes or dataset.boxes_file


def run_extract(args: argparse.Namespace) -> int:
    """Extract the images into the store and print the summary; exit 2 on bad input or a --fail-fast stop.

    Unreadable images do not change the exit status: they are listed in the summary and failures.parquet.
    """
    from extractors.extract import extract_dataset, load_boxes_json

    try:
        config, store, run, dask_config = extraction_configs(args)
        images, boxes_file = _images_and_boxes(args, config)
        options = dict(store=store, run=run, boxes=load_boxes_json(boxes_file) if boxes_file else None,
                       prune=args.prune, progress=args.progress)
        if args.dask or dask_config.scheduler_address:
            from extractors.distributed import DaskRunner  # imports dask.distributed: slow, so only when asked

            with DaskRunner(config, run, dask_config, progress=args.progress) as runner:
                summary = extract_dataset(images, args.store, config, runner=runner, **options)
        else:
            summary = extract_dataset(images, args.store, config, **options)
    except (InputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def add_extract(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("extract", help="Extract region features of an image set into a sharded store.",
                                   description="Re-running resumes: images already stored unchanged are skipped.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="Folder of images (recursive); ids are relative paths without suffix.")
    source.add_argument("--dataset", choices=DATASET_NAMES, help="Registered dataset, read from --data-root; "
                                                                 "its presets apply to what is not set.")
    parser.add_argument("--data-root", help="Folder with one sub-folder per dataset "
                                            "(default $SCAN_DATA_ROOT or ./data).")
    parser.add_argument("--store", required=True, help="Store directory (created if absent).")
    parser.add_argument("--boxes", type=Path, help="Given-boxes mode: JSON {image_id: [[x1, y1, x2, y2], ...]} in "
                                                   "original pixels (default: the dataset's own boxes file, if any).")
    parser.add_argument("--dask", action="store_true", help="Run one task per shard on Dask: a LocalCluster, or the "
                                                           "cluster of --scheduler-address (which implies --dask).")
    parser.add_argument("--prune", action="store_true", help="The manifest lists only these images (default: it adds "
                                                             "them to the images the store already lists).")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="Show a progress bar.")
    for config_cls in (ExtractorConfig, StoreConfig, RunConfig, DaskConfig):
        add_config_flags(parser, config_cls, flags=FLAG_NAMES.get(config_cls, {}))
    parser.set_defaults(handler=run_extract)


def run_verify(args: argparse.Namespace) -> int:
    """The store tools' verify (`python -m pipeline.store verify`), under the extractor's command line."""
    from pipeline.store.__main__ import report_problems

    return report_problems(args.store, check_values=not args.skip_values)


def add_verify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="Check a feature store: every shard against the manifest.")
    parser.add_argument("--store", required=True, help="Store directory (holds store.json).")
    parser.add_argument("--skip-values", action="store_true", help="Do not read all features looking for NaN/Inf.")
    parser.set_defaults(handler=run_verify)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_verify_weights, add_extract, add_verify]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m extractors", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
