"""Search benchmark: two-stage (pooled shortlist + SCAN re-ranking) against exact SCAN ranking.

Part 1, recall: a small SCAN model trained here with models.train on a synthetic concept
matching problem, evaluated on a held-out 1K-image gallery: text->image R@10 and image->text R@10 of exact and two-stage search for
several shortlist sizes N.
Part 2, scale: synthetic galleries of 100,000 and 1,000,000 images already in the joint
space (R regions x d, float16, written chunk by chunk from a seeded generator to a memory map
on disk); queries are noisy copies of a gallery image's regions. Latency per query of both
modes, the one-off pooling (index build) time, and how often two-stage finds the exact top-1.

    .venv/bin/python benchmarks/bench_search.py            # full (a few minutes, 1.5 GB temp file)
    .venv/bin/python benchmarks/bench_search.py --quick    # 10,000 images, seconds
    .venv/bin/python benchmarks/bench_search.py --demo-workspace workspace   # recall on the demo test split
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.config import EvalConfig, ModelConfig, TrainConfig  # noqa: E402
from models.data import CaptionPairs, PrecompFeatures, image_index_for_captions  # noqa: E402
from models.evaluate import encode_split  # noqa: E402
from models.retrieval import Embeddings, exact_search, pooled, two_stage_search  # noqa: E402
from models.train import train  # noqa: E402

CONCEPTS, IMG_DIM, REGIONS = 24, 32, 3
SHORTLISTS = (20, 50, 100, 200, 300, 500)
SCALE_R, SCALE_D, CHUNK = 12, 64, 50_000


def concept_split(path: Path, n_images: int, seed: int, per_image: int) -> CaptionPairs:
    """Images of 3 distinct concepts (prototype + noise per region); captions name them in random order."""
    prototypes = np.random.default_rng(99).normal(size=(CONCEPTS, IMG_DIM))
    rng = np.random.default_rng(seed)
    chosen = np.stack([rng.choice(CONCEPTS, size=REGIONS, replace=False) for _ in range(n_images)])
    features = prototypes[chosen] + 0.4 * rng.normal(size=(n_images, REGIONS, IMG_DIM))
    np.save(path, features.astype(np.float32))
    captions = [[1, *(4 + rng.permutation(row)).tolist(), 2] for row in chosen for _ in range(per_image)]
    return CaptionPairs(PrecompFeatures(path), captions, image_index_for_captions(n_images, len(captions), source=path))


def recall_at(ranking_indices: torch.Tensor, truth: np.ndarray, k: int = 10) -> float:
    """Percent of queries whose true item (any of ``truth`` rows' sets) is in the top k."""
    hits = [bool(set(row[:k]) & set(np.atleast_1d(t))) for row, t in zip(ranking_indices.tolist(), truth)]
    return 100.0 * float(np.mean(hits))


def recall_part(work: Path, test_images: int) -> dict:
    model_config = ModelConfig(img_dim=IMG_DIM, word_dim=32, embed_size=64)
    train_config = TrainConfig(learning_rate=2e-3, num_epochs=6, lr_update=4, batch_size=64, workers=0, device="cpu")
    started = time.perf_counter()
    summary = train(model_config, train_config, 4 + CONCEPTS, concept_split(work / "train_ims.npy", 2000, 0, 1),
                    concept_split(work / "dev_ims.npy", 100, 1, 5), work / "run")
    train_s = time.perf_counter() - started
    from models.compat import load_model
    model = load_model(work / "run" / "model_best.pth").model
    test = concept_split(work / "test_ims.npy", test_images, 2, 5)
    return {"train_seconds": round(train_s, 1), "best_dev_rsum": summary["best_rsum"], "test_images": test_images,
            **shortlist_recall(model, test, test_images, SHORTLISTS)}


def shortlist_recall(model, test: CaptionPairs, test_images: int, shortlists) -> dict:
    """R@10 of exact and two-stage search (one text query per image, up to 200 image queries)."""
    encoded = encode_split(model, test, EvalConfig(), torch.device("cpu"))
    images = Embeddings(encoded.img_emb, encoded.img_lens.numpy())
    first_captions = np.arange(0, len(test), 5)          # one text query per image
    texts = Embeddings(encoded.cap_emb[first_captions], encoded.cap_lens[first_captions].numpy())
    all_captions = Embeddings(encoded.cap_emb, encoded.cap_lens.numpy())
    image_queries = np.arange(0, test_images, max(1, test_images // 200))   # up to 200 image queries
    image_set = Embeddings(encoded.img_emb[image_queries], encoded.img_lens[image_queries].numpy())
    caption_truth = [np.arange(5 * i, 5 * i + 5) for i in image_queries]
    rows = {}
    for mode, n in [("exact", None), *(("two-stage", n) for n in shortlists)]:
        started = time.perf_counter()
        if mode == "exact":
            t2i = exact_search(texts, images, True, model.config, 10)
            i2t = exact_search(image_set, all_captions, False, model.config, 10)
        else:
            t2i = two_stage_search(texts, images, True, model.config, 10, n)
            i2t = two_stage_search(image_set, all_captions, False, model.config, 10, n)
        rows[mode if n is None else f"two-stage N={n}"] = {
            "t2i_r10": recall_at(t2i.indices, np.arange(test_images)), "i2t_r10": recall_at(i2t.indices, caption_truth),
            "seconds": round(time.perf_counter() - started, 2)}
    exact = rows["exact"]
    ok = [n for n in shortlists if all(exact[d] - rows[f"two-stage N={n}"][d] <= 1.0 for d in ("t2i_r10", "i2t_r10"))]
    return {"rows": rows, "smallest_N_within_1_point_R@10": ok[0] if ok else None}


def demo_part(workspace: Path) -> dict:
    """The same recall comparison on the demo test split, with the demo model the workflow trained."""
    from models.compat import load_model
    from models.store_pairs import split_pairs
    [checkpoint] = sorted(workspace.glob("TrainModel/demo-*/model_best.pth"))[:1]
    [store] = sorted(workspace.glob("FeatureStore/demo-*/store"))[:1]
    [captions] = sorted(workspace.glob("PrepareCaptions/demo-*/captions.parquet"))[:1]
    test = split_pairs(store, captions, "test", evaluation=True)
    n_images = len(test) // 5
    shortlists = [n for n in (5, 10, 20, 30, 50) if n < n_images]
    return {"test_images": n_images, **shortlist_recall(load_model(checkpoint).model, test, n_images, shortlists)}


def synthetic_gallery(path: Path, n_images: int) -> Embeddings:
    """(n, R, d) float16 unit region embeddings on disk, written one chunk at a time."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n_images, SCALE_R, SCALE_D))
    for start in range(0, n_images, CHUNK):
        rng = np.random.default_rng([7, start])
        block = rng.standard_normal((min(CHUNK, n_images - start), SCALE_R, SCALE_D), dtype=np.float32)
        array[start:start + len(block)] = block / np.linalg.norm(block, axis=2, keepdims=True)
    array.flush()
    del array
    return Embeddings(np.load(path, mmap_mode="r"), np.full(n_images, SCALE_R))


def noisy_queries(gallery: Embeddings, targets: np.ndarray, words: int = 6) -> Embeddings:
    """Captions whose words are noisy copies of ``words`` regions of their target image."""
    rng = np.random.default_rng(3)
    emb, _ = gallery.take(targets)
    picked = emb[:, :words] + 0.8 * torch.from_numpy(rng.standard_normal((len(targets), words, SCALE_D), dtype=np.float32)) / SCALE_D ** 0.5
    return Embeddings(torch.nn.functional.normalize(picked, dim=2), np.full(len(targets), words))


def scale_part(work: Path, n_images: int, exact_queries: int, staged_queries: int, shortlist: int) -> dict:
    started = time.perf_counter()
    gallery = synthetic_gallery(work / f"gallery_{n_images}.npy", n_images)
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    index = pooled(gallery, chunk=CHUNK)
    pool_s = time.perf_counter() - started
    targets = np.random.default_rng(11).choice(n_images, size=staged_queries, replace=False)
    queries = noisy_queries(gallery, targets)
    options = ModelConfig()
    started = time.perf_counter()
    staged = two_stage_search(queries, gallery, True, options, 10, shortlist, gallery_pooled=index)
    staged_s = (time.perf_counter() - started) / staged_queries
    few = Embeddings(queries.emb[:exact_queries], queries.lens[:exact_queries])
    started = time.perf_counter()
    exact = exact_search(few, gallery, True, options, 10, chunk=CHUNK)
    exact_s = (time.perf_counter() - started) / exact_queries
    agree = np.mean([e[0] in s for e, s in zip(exact.indices.tolist(), staged.indices[:exact_queries].tolist())])
    (work / f"gallery_{n_images}.npy").unlink()
    return {"images": n_images, "R": SCALE_R, "d": SCALE_D, "dtype": "float16 memmap",
            "generate_seconds": round(generate_s, 1), "pool_index_seconds": round(pool_s, 1),
            "exact_seconds_per_query": round(exact_s, 3), "exact_queries_batched": exact_queries,
            "two_stage_seconds_per_query": round(staged_s, 4), "shortlist": shortlist,
            "speedup": round(exact_s / staged_s, 1),
            "two_stage_R@10_true_image": recall_at(staged.indices, targets),
            "exact_R@10_true_image": recall_at(exact.indices, targets[:exact_queries]),
            "exact_top1_in_two_stage_top10": 100.0 * float(agree)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes, for a smoke run.")
    parser.add_argument("--shortlist", type=int, default=100, help="N for the scale part.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--demo-workspace", type=Path,
                        help="Only measure recall on the demo test split with the model trained in this workspace.")
    args = parser.parse_args()
    if args.demo_workspace is not None:
        print(json.dumps(demo_part(args.demo_workspace), indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        work = Path(tmp)
        results = {"recall": recall_part(work, 200 if args.quick else 1000)}
        print(json.dumps(results["recall"], indent=2), flush=True)
        sizes = [(10_000, 2)] if args.quick else [(100_000, 8), (1_000_000, 4)]
        results["scale"] = []
        for n_images, exact_queries in sizes:
            results["scale"].append(scale_part(work, n_images, exact_queries, 20, args.shortlist))
            print(json.dumps(results["scale"][-1], indent=2), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
