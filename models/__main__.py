"""Command line: ``python -m models evaluate|export-scan|train|search|attention ...`` (see each ``--help``).

Evaluation options are generated from EvalConfig, so the CLI and the Luigi tasks share one
definition of each setting.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import torch

from models.attention_viz import add_attention_arguments, run_attention
from models.compat import load_model, load_precomp_split
from models.config import EvalConfig
from models.evaluate import evaluate_models, evaluation_pairs, format_table, save_results
from models.export import export_scan
from models.search import SearchConfig, add_search_arguments, run_search
from models.train import run_train_job
from pipeline.captions import Vocabulary
from pipeline.errors import InputError


def add_dataclass_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--field-name`` option per dataclass field, with its type, default and help."""
    for spec in fields(config_class):
        flag = "--" + spec.name.replace("_", "-")
        default = spec.default if spec.default is not MISSING else None
        help_text = spec.metadata.get("help", "")
        if spec.type in (bool, "bool"):
            parser.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=spec.name, type=type(default), default=default,
                                help=f"{help_text} (default: {default})")


def config_from_args(args: argparse.Namespace, config_class: type):
    return config_class(**{spec.name: getattr(args, spec.name) for spec in fields(config_class)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser("evaluate", help="R@K of SCAN checkpoints (several: ensemble) on precomp data")
    evaluate.add_argument("--checkpoint", action="append", required=True, type=Path,
                          help="Reference model_best.pth.tar or our checkpoint; repeat for an ensemble.")
    evaluate.add_argument("--data", required=True, type=Path, help="Folder of {split}_ims.npy and {split}_caps.txt.")
    evaluate.add_argument("--vocab", required=True, type=Path,
                          help="SCAN vocabulary JSON (e.g. f30k_precomp_vocab.json).")
    evaluate.add_argument("--json", type=Path, help="Write results here (ranks beside it as .npy).")
    evaluate.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N.")
    add_dataclass_options(evaluate, EvalConfig)
    export = commands.add_parser("export-scan", help="Our checkpoint -> the reference SCAN's model_best.pth.tar + vocab")
    export.add_argument("--checkpoint", required=True, type=Path, help="Our checkpoint (model_best.pth).")
    export.add_argument("--vocab", required=True, type=Path, help="SCAN vocabulary JSON the model was trained with.")
    export.add_argument("--out", required=True, type=Path, help="Folder for model_best.pth.tar and the vocabulary.")
    export.add_argument("--data-name", help="Dataset name for the reference, e.g. f30k_precomp (default: from X_vocab.json).")
    export.add_argument("--data-path", default="./data/", help="opt.data_path for the reference (default: ./data/).")
    train = commands.add_parser("train", help="Train from a JSON job (models.train.write_train_job); torchrun-ready")
    train.add_argument("--config", required=True, type=Path, help="Job file.")
    search = commands.add_parser("search", help="Text -> top-k images of a store, image -> top-k captions")
    add_search_arguments(search)
    add_dataclass_options(search, SearchConfig)
    attention = commands.add_parser("attention", help="PNG of the attention of one (image, caption) pair")
    add_attention_arguments(attention)
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    config = config_from_args(args, EvalConfig)
    device = torch.device(args.device)
    vocab = Vocabulary.from_scan_json(args.vocab)
    pairs, protocol = evaluation_pairs(load_precomp_split(args.data, config.split, vocab), config.split,
                                       config.reference_dev)
    loaded = [load_model(path, device) for path in args.checkpoint]
    for path, entry in zip(args.checkpoint, loaded):
        if entry.vocab_size != len(vocab):
            raise InputError(args.vocab, f"{len(vocab)} words, but {path} was trained with {entry.vocab_size}")
    models = [entry.model for entry in loaded]
    results, ranks = evaluate_models(models, pairs, config, device, progress=True)
    results = {**results, "protocol": protocol.as_dict()}
    print(protocol.describe())
    print(format_table(results))
    if args.json is not None:
        save_results(results, ranks, args.json)
    return 0


def run_export(args: argparse.Namespace) -> int:
    files = export_scan(args.checkpoint, args.vocab, args.out, data_name=args.data_name, data_path=args.data_path)
    print(f"wrote {files.checkpoint} and {files.vocab}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "export-scan":
            return run_export(args)
        if args.command == "search":
            return run_search(args, config_from_args(args, SearchConfig))
        if args.command == "attention":
            return run_attention(args)
        run_train_job(args.config)
        return 0
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
