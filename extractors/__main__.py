"""`python -m extractors <command>`: one subcommand per job, each registered by a small function.

Add a command by writing `add_<name>(subparsers)` that sets `handler` and listing it in
COMMANDS.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Callable

from extractors.config import PRESETS, ExtractorConfig
from pipeline.config import DATASET_NAMES, DatasetConfig
from pipeline.errors import InputError


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
    for label, names in (("missing", report.missing), ("unexpected", report.unexpected), ("mismatched", report.mismatched)):
        for name in names[: args.show]:
            print(f"  {label}: {name}")
    return 0 if report.ok else 1


def add_verify_weights(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify-weights", help="Check a published weights file against a backbone preset.")
    parser.add_argument("path", help="Weights file (.pkl airsplay or .pth milvlg) or URL.")
    parser.add_argument("--format", default="auto", choices=["auto", "airsplay", "milvlg"], help="Weights layout (default: detect).")
    parser.add_argument("--backbone", default="R101-C4-VG", choices=sorted(PRESETS), help="Backbone preset to check against.")
    parser.add_argument("--sha256", default="", help="Expected SHA-256 of the file.")
    parser.add_argument("--show", type=int, default=10, help="List at most this many names per problem kind.")
    parser.set_defaults(handler=run_verify_weights)


# Flags whose names differ from their config field (short, as users type them).
_FLAG_NAMES = {"num_workers": "--workers", "n_workers": "--dask-workers", "host": "--dask-host"}


def _add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per dataclass field, help from its metadata; unset flags stay None (the dataclass decides)."""
    group = parser.add_argument_group(config_cls.__name__)
    hints = typing.get_type_hints(config_cls)
    for spec in dataclasses.fields(config_cls):
        flag = _FLAG_NAMES.get(spec.name, "--" + spec.name.replace("_", "-"))
        kind = hints[spec.name]
        options = {"dest": spec.name, "default": None, "help": spec.metadata.get("help", "")}
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        else:
            group.add_argument(flag, type=kind if kind in (int, float) else str, **options)


def _given(args: argparse.Namespace, config_cls: type) -> dict:
    return {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(config_cls)
            if getattr(args, spec.name) is not None}


def _images_to_extract(args: argparse.Namespace) -> list:
    from extractors.loader import images_in_directory
    from pipeline.datasets import load_dataset, registered_config

    if args.images:
        return images_in_directory(args.images)
    data_root = args.data_root or DatasetConfig().data_root
    return list(load_dataset(registered_config(args.dataset, Path(data_root))).images)


def run_extract(args: argparse.Namespace) -> int:
    """Extract the images into the store and print the summary; exit 2 on bad input or a --fail-fast stop.

    Unreadable images do not change the exit status: they are listed in the summary and failures.parquet.
    """
    from extractors.extract import DaskConfig, RunConfig, extract_dataset, load_boxes_json
    from pipeline.store import StoreConfig, sha256_file

    try:
        config = ExtractorConfig.for_preset(args.backbone or ExtractorConfig.backbone,
                                            **{k: v for k, v in _given(args, ExtractorConfig).items() if k != "backbone"})
        run, store = RunConfig(**_given(args, RunConfig)), StoreConfig(**_given(args, StoreConfig))
        images = _images_to_extract(args)
        boxes = load_boxes_json(args.boxes) if args.boxes else None
        options = dict(store=store, run=run, boxes=boxes, boxes_sha256=sha256_file(args.boxes) if args.boxes else "",
                       progress=args.progress)
        if args.dask or args.scheduler_address:
            from extractors.distributed import DaskRunner  # imports dask.distributed: slow, so only when asked

            with DaskRunner(config, run, DaskConfig(**_given(args, DaskConfig)), progress=args.progress) as runner:
                summary = extract_dataset(images, args.store, config, runner=runner, **options)
        else:
            summary = extract_dataset(images, args.store, config, **options)
    except (InputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def add_extract(subparsers: argparse._SubParsersAction) -> None:
    from extractors.extract import DaskConfig, RunConfig
    from pipeline.store import StoreConfig

    parser = subparsers.add_parser("extract", help="Extract region features of an image set into a sharded store.",
                                   description="Re-running resumes: images already stored unchanged are skipped.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="Folder of images (recursive); ids are relative paths without suffix.")
    source.add_argument("--dataset", choices=DATASET_NAMES, help="Registered dataset, read from --data-root.")
    parser.add_argument("--data-root", help="Folder with one sub-folder per dataset (default $SCAN_DATA_ROOT or ./data).")
    parser.add_argument("--store", required=True, help="Store directory (created if absent).")
    parser.add_argument("--boxes", help="Given-boxes mode: JSON {image_id: [[x1, y1, x2, y2], ...]} in original pixels.")
    parser.add_argument("--dask", action="store_true", help="Run one task per shard on Dask: a LocalCluster, "
                                                           "or the cluster of --scheduler-address (which implies --dask).")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="Show a progress bar.")
    for config_cls in (ExtractorConfig, StoreConfig, RunConfig, DaskConfig):
        _add_config_arguments(parser, config_cls)
    parser.set_defaults(handler=run_extract)


def run_verify(args: argparse.Namespace) -> int:
    """Print every problem of the store with its fix; exit 1 if there is any."""
    from pipeline.store import verify_store

    problems = verify_store(args.store, check_values=not args.skip_values)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{args.store}: {len(problems)} problem(s)" if problems else f"{args.store}: OK")
    return 1 if problems else 0


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
