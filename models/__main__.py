"""Command line: ``python -m models evaluate|export-scan|train|search|index|attention|serve ...`` (see each ``--help``).

Only argument parsing and printing live here; each command calls one library function. Config
options come from the dataclasses (pipeline.config_flags), as the Luigi tasks' parameters do.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.attention_viz import draw_pair
from models.compat import load_model_with_vocab, load_precomp_split
from models.compat import load_model
from models.config import EvalConfig
from models.evaluate import evaluate_models, evaluation_pairs, format_table, save_results
from models.export import export_scan
from models.index import ensure_index
from models.search import (SearchConfig, SearchIndex, answer_queries, format_results, load_caption_set, read_queries,
                           save_results as save_search_results)
from models.service.backend import ServiceFiles
from models.service.demo import demo_files
from models.service.server import ServeConfig, serve
from models.train import run_train_job
from pipeline.config_flags import add_config_flags, config_from_args
from pipeline.devices import resolve_device
from pipeline.errors import InputError

MODEL_HELP = "Our checkpoint or SCAN's model_best.pth.tar."
GALLERY_HELP = "Feature store directory (the image gallery)."
VOCAB_HELP = "SCAN vocabulary JSON the model was trained with (e.g. f30k_precomp_vocab.json)."


def add_model_and_store(parser: argparse.ArgumentParser, *, store_help: str = GALLERY_HELP, vocab: bool = True,
                        required: bool = True) -> None:
    """--checkpoint, --store (and --vocab): what search, index, attention and serve read."""
    parser.add_argument("--checkpoint", required=required, type=Path, help=MODEL_HELP)
    parser.add_argument("--store", required=required, type=Path, help=store_help)
    if vocab:
        parser.add_argument("--vocab", required=required, type=Path, help=VOCAB_HELP)

def add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", help="R@K of SCAN checkpoints (several: ensemble) on precomp data")
    parser.add_argument("--checkpoint", action="append", required=True, type=Path,
                        help=MODEL_HELP + " Repeat for an ensemble (similarities averaged).")
    parser.add_argument("--data", required=True, type=Path, help="Folder of {split}_ims.npy and {split}_caps.txt.")
    parser.add_argument("--vocab", required=True, type=Path, help=VOCAB_HELP)
    parser.add_argument("--json", type=Path, help="Write results here (ranks beside it as .npy).")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N.")
    add_config_flags(parser, EvalConfig)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    config, device = config_from_args(args, EvalConfig), resolve_device(args.device)
    loaded = [load_model_with_vocab(path, args.vocab, device) for path in args.checkpoint]
    pairs, protocol = evaluation_pairs(load_precomp_split(args.data, config.split, loaded[0][1]), config.split,
                                       config.reference_dev)
    results, ranks = evaluate_models([model.model for model, _ in loaded], pairs, config, device, progress=True)
    results = {**results, "protocol": protocol.as_dict()}
    print(protocol.describe())
    print(format_table(results))
    if args.json is not None:
        save_results(results, ranks, args.json)
    return 0


def add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export-scan",
                                 help="Our checkpoint -> the reference SCAN's model_best.pth.tar + vocab")
    parser.add_argument("--checkpoint", required=True, type=Path, help="Our checkpoint (model_best.pth).")
    parser.add_argument("--vocab", required=True, type=Path, help=VOCAB_HELP)
    parser.add_argument("--out", required=True, type=Path, help="Folder for model_best.pth.tar and the vocabulary.")
    parser.add_argument("--data-name",
                        help="Dataset name for the reference, e.g. f30k_precomp (default: from X_vocab.json).")
    parser.add_argument("--data-path", default="./data/", help="opt.data_path for the reference (default: ./data/).")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    files = export_scan(args.checkpoint, args.vocab, args.out, data_name=args.data_name, data_path=args.data_path)
    print(f"wrote {files.checkpoint} and {files.vocab}")
    return 0


def add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="Train from a JSON job (models.train.write_train_job); torchrun-ready")
    parser.add_argument("--config", required=True, type=Path, help="Job file.")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    run_train_job(args.config)
    return 0


def add_search(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("search", help="Text -> top-k images of a store, image -> top-k captions")
    add_model_and_store(parser)
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--text", action="append", help="Caption query -> top-k images (repeatable).")
    queries.add_argument("--image", action="append", help="Store image id -> top-k captions (repeatable).")
    queries.add_argument("--queries", type=Path, help="File of queries, one a line; 'image:<id>' for an image.")
    parser.add_argument("--captions", type=Path, help="Captions for image queries: our Parquet table or a .txt file.")
    parser.add_argument("--split", help="Only this split of a Parquet captions table (train | dev | test).")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    add_config_flags(parser, SearchConfig)
    parser.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace) -> int:
    config = config_from_args(args, SearchConfig)
    texts, images = read_queries(args.queries) if args.queries else (args.text or [], args.image or [])
    captions = load_caption_set(args.captions, args.split) if args.captions is not None else None
    index = SearchIndex.open(args.checkpoint, args.store, args.vocab, policy=config.index_policy)
    print(index.status, file=sys.stderr)
    results = answer_queries(index, texts, images, captions, config)
    print(format_results(results))
    if args.json is not None:
        save_search_results(results, config, args.json)
    return 0


def add_index(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("index", help="Build or update the search index of a store for a checkpoint")
    add_model_and_store(parser, vocab=False)
    parser.add_argument("--kind", choices=("auto", "flat", "ivf"), default="auto",
                        help="FAISS index: flat (exact) | ivf (IVF-SQ8) | auto (flat up to a measured size).")
    parser.set_defaults(handler=run_index)


def run_index(args: argparse.Namespace) -> int:
    _, status = ensure_index(load_model(args.checkpoint).model, args.store, args.checkpoint, kind=args.kind)
    print(status)
    return 0


def add_attention(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("attention", help="PNG of the attention of one (image, caption) pair")
    add_model_and_store(parser, store_help="Feature store holding the image's regions.")
    parser.add_argument("--image", required=True, help="Image id in the store.")
    parser.add_argument("--caption", required=True, help="Caption to explain.")
    parser.add_argument("--image-file", type=Path, help="The image itself (else a grey canvas of its size).")
    parser.add_argument("--view", choices=("t2i", "i2t"),
                        help="Per word (t2i) or per region (i2t); default the model's.")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write.")
    parser.set_defaults(handler=run_attention)


def run_attention(args: argparse.Namespace) -> int:
    path, attention = draw_pair(args.checkpoint, args.store, args.vocab, args.image, args.caption, args.out,
                                image_file=args.image_file, view=args.view)
    print(f"{path}  (score {attention.score:.4f}, {attention.cross_attn} model)")
    return 0


def add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="Web page and HTTP API: search and attention over a store (read only)")
    parser.add_argument("--demo", action="store_true",
                        help="Serve the newest demo model of the workspace (after `make demo`).")
    parser.add_argument("--workspace", type=Path, help="With --demo: the workspace (default $SCAN_WORKSPACE, else "
                                                       "./workspace; luigi.cfg's [scan] workspace is not read).")
    add_model_and_store(parser, required=False)
    parser.add_argument("--captions", type=Path, help="Captions for image -> captions queries: Parquet table or .txt.")
    parser.add_argument("--images-root", type=Path, help="Folder the store's image paths are relative to "
                                                         "(serves /api/images/ID; without it, boxes on grey).")
    add_config_flags(parser, ServeConfig)
    add_config_flags(parser, SearchConfig, exclude=("top_k", "mode", "index_policy"))
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    given = [args.checkpoint, args.store, args.vocab]
    if args.demo == any(path is not None for path in given) or (not args.demo and None in given):
        raise InputError("serve", "give either --demo or all of --checkpoint, --store and --vocab")
    files = demo_files(args.workspace) if args.demo else ServiceFiles(args.checkpoint, args.store, args.vocab,
                                                                      args.captions, args.images_root)
    serve(files, config_from_args(args, ServeConfig), config_from_args(args, SearchConfig))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (add_evaluate, add_export, add_train, add_search, add_index, add_attention, add_serve):
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
