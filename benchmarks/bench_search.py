"""Search benchmark: the trained global head, the FAISS first stage and batched SCAN re-ranking.

Part 1, recall (``--recall``): a small SCAN model trained here on a synthetic concept-matching
problem (models.train, with the default frozen-encoder head stage, and once more with joint
training), evaluated on a held-out 1,000-image / 5,000-caption gallery with the retrieval protocol
(models.evaluate): exact SCAN, the global model alone (GPO head; untrained mean pooling as the
baseline) and two-stage at shortlists of 1, 2 and 5 % of the gallery, both directions.
Part 2, demo (``--demo-workspace W``): the same table on the demo test split with the model the
workflow trained in workspace W (and the mean-pooling baseline of the same model).
Part 3, scale (``--scale N``): an N-image synthetic gallery on disk, read as models.index reads it: region
embeddings (R=12, d=256, float16; each image's regions drawn around one of 1,000 topics, since real
embeddings are clustered) and global vectors (d=1024, float16, as a real model's). Each
phase runs in its own process so its peak RSS is its own: FAISS index build (IVF-SQ8 above the
flat limit); text->image queries one at a time (a real-size GRU text encoder, int8 as search's default, then the index's
shortlist of 100 re-ranked by SCAN from the file): p50/p95 latency; today's two-stage
(brute-force scan of float32 mean vectors held in RAM, re-ranking one query at a time) on the same
queries; exact SCAN over the whole gallery for a few queries, to count how often two-stage finds
its top-1. Flat vs IVF latency and shortlist recall at several sizes pick the flat limit.

    .venv/bin/python benchmarks/bench_search.py --recall
    .venv/bin/python benchmarks/bench_search.py --demo-workspace workspace
    .venv/bin/python benchmarks/bench_search.py --scale 1000000 --work /big/disk   # ~8 GB of temp files
"""
from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.compat import load_model  # noqa: E402
from models.config import EvalConfig, HeadConfig, ModelConfig, TrainConfig  # noqa: E402
from models.data import CaptionPairs, PrecompFeatures, image_index_for_captions  # noqa: E402
from models.encoders import TextEncoder  # noqa: E402
from models.evaluate import evaluate_models  # noqa: E402
from models.index import RowFile  # noqa: E402
from models.query_encoder import query_text_encoder  # noqa: E402
from models.retrieval import Embeddings, Ranking, _merge, _top_k, exact_search, pair_scores, rerank  # noqa: E402
from models.search import SearchConfig, SearchIndex  # noqa: E402
from models.vector_index import FLAT_LIMIT, VectorIndex  # noqa: E402

CONCEPTS, IMG_DIM, REGIONS = 24, 32, 3
FRACTIONS = (0.01, 0.02, 0.05)
SCALE_R, SCALE_D, GLOBAL_D, CHUNK = 12, 256, 1024, 50_000
WORDS, SHORTLIST, TOPICS, QUERY_POOL = 6, 100, 1000, 200


def concept_split(path: Path, n_images: int, seed: int, per_image: int) -> CaptionPairs:
    """Images of 3 distinct concepts (prototype + noise per region); captions name them in random order."""
    prototypes = np.random.default_rng(99).normal(size=(CONCEPTS, IMG_DIM))
    rng = np.random.default_rng(seed)
    chosen = np.stack([rng.choice(CONCEPTS, size=REGIONS, replace=False) for _ in range(n_images)])
    features = prototypes[chosen] + 0.4 * rng.normal(size=(n_images, REGIONS, IMG_DIM))
    np.save(path, features.astype(np.float32))
    captions = [[1, *(4 + rng.permutation(row)).tolist(), 2] for row in chosen for _ in range(per_image)]
    return CaptionPairs(PrecompFeatures(path), captions, image_index_for_captions(n_images, len(captions), source=path))


def mode_table(model, pairs: CaptionPairs, fractions) -> dict:
    """R@1/R@10 and rsum of exact, global and two-stage (per fraction) with the retrieval protocol."""
    rows = {}
    for fraction in fractions:
        config = EvalConfig(modes=("exact", "global", "two-stage"), shortlist_fraction=fraction)
        results, _ = evaluate_models([model], pairs, config, torch.device("cpu"))
        modes = results["modes"]
        rows.setdefault("exact", _recalls(modes["exact"]))
        rows.setdefault("global", _recalls(modes["global"]))
        rows[f"two-stage {100 * fraction:g}% (N={modes['two-stage']['shortlist']})"] = _recalls(modes["two-stage"])
    return rows


def _recalls(table: dict) -> dict:
    return {"i2t_r1": table["i2t"]["r1"], "i2t_r10": table["i2t"]["r10"], "t2i_r1": table["t2i"]["r1"],
            "t2i_r10": table["t2i"]["r10"], "rsum": round(table["rsum"], 1)}


def both_heads(checkpoint: Path, pairs: CaptionPairs, fractions) -> dict:
    """The checkpoint's trained head, and the same encoders with untrained mean pooling (the baseline)."""
    trained = mode_table(load_model(checkpoint).model, pairs, fractions)
    baseline = load_model(checkpoint).model
    baseline.global_head = None
    return {"trained head": trained, "mean pooling (no head)": mode_table(baseline, pairs, fractions)}


def recall_part(work: Path, test_images: int) -> dict:
    model_config = ModelConfig(img_dim=IMG_DIM, word_dim=32, embed_size=64)
    train_config = TrainConfig(learning_rate=2e-3, num_epochs=6, lr_update=4, batch_size=64, workers=0, device="cpu")
    train_pairs = concept_split(work / "train_ims.npy", 2000, 0, 1)
    dev_pairs = concept_split(work / "dev_ims.npy", 100, 1, 5)
    test = concept_split(work / "test_ims.npy", test_images, 2, 5)
    from models.train import train
    results = {}
    for name, head in (("frozen", HeadConfig()), ("joint", HeadConfig(head_training="joint"))):
        started = time.perf_counter()
        summary = train(model_config, train_config, 4 + CONCEPTS, train_pairs, dev_pairs, work / name, head_config=head)
        results[name] = {"train_seconds": round(time.perf_counter() - started, 1),
                         "best_dev_rsum_scan": summary["best_rsum"], **both_heads(work / name / "model_best.pth",
                                                                                 test, FRACTIONS)}
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    return results


def demo_part(workspace: Path) -> dict:
    """The same tables on the demo test split, for each model the workflow trained in ``workspace``."""
    from models.store_pairs import split_pairs
    [store] = sorted(workspace.glob("FeatureStore/demo-*/store"))[:1]
    [captions] = sorted(workspace.glob("PrepareCaptions/demo-*/captions.parquet"))[:1]
    test = split_pairs(store, captions, "test", evaluation=True)
    results = {}
    for checkpoint in sorted(workspace.glob("TrainModel/demo-*/model_best.pth")):
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        name = f"{checkpoint.parent.name} ({(payload.get('head_config') or {}).get('head_training', 'no head')})"
        results[name] = both_heads(checkpoint, test, (0.05, 0.1, 0.2))
        [vocab] = sorted(workspace.glob("BuildVocab/demo-*/vocab.json"))[:1]
        results[name]["query encoder"] = query_encoder_table(checkpoint, store, captions, vocab)
    return results


def query_encoder_table(checkpoint: Path, store: Path, captions: Path, vocab: Path) -> dict:
    """int8 vs float32 query encoder through `python -m models search`'s path: the test captions as text
    queries over the whole store (every split: the saved index is the store's), R@1/5/10 of each
    caption's own image, and how many queries get the very same top 10."""
    from pipeline.captions import read_captions
    table = read_captions(captions, "test").to_pydict()
    index = SearchIndex.open(checkpoint, store, vocab)
    rows, tops = {}, {}
    for mode in ("exact", "two-stage"):
        for precision in ("float32", "int8"):
            config = SearchConfig(top_k=10, mode=mode, shortlist=max(1, len(index.gallery) // 20),
                                  query_encoder=precision)
            found = [[hit.image_id for hit in result.hits] for result in index.search_text(table["raw"], config)]
            ranks = [top.index(owner) if owner in top else 10 for top, owner in zip(found, table["image_id"])]
            rows[f"{mode}, {precision}"] = {f"t2i_r{k}": round(100 * float(np.mean(np.array(ranks) < k)), 1)
                                            for k in (1, 5, 10)}
            tops[(mode, precision)] = found
        pairs = list(zip(tops[(mode, "float32")], tops[(mode, "int8")]))
        rows[f"{mode}, int8"].update({
            "same_top10_list_pct": round(100 * float(np.mean([a == b for a, b in pairs])), 1),
            "same_top1_pct": round(100 * float(np.mean([a[:1] == b[:1] for a, b in pairs])), 1),
            "top10_overlap_pct": round(100 * float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])), 1)})
    return {"gallery": len(index.gallery), "queries": len(table["raw"]), **rows}


# ---- part 3: scale ---------------------------------------------------------------------------

@functools.cache
def lift(n_in: int) -> torch.Tensor:
    """A fixed random map from the region space (d=256) to the global space (d=1024)."""
    return torch.randn(n_in, GLOBAL_D, generator=torch.Generator().manual_seed(5)) / n_in ** 0.5


def global_vectors(emb: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Synthetic first-stage vectors: the lifted mean embedding, normalised (what a trained head gives)."""
    mask = (torch.arange(emb.size(1)) < lens[:, None])[..., None]
    mean = (emb * mask).sum(1) / lens[:, None]
    return torch.nn.functional.normalize(mean @ lift(emb.size(2)), dim=1)


def generate(work: Path, n: int) -> dict:
    started = time.perf_counter()
    regions = np.memmap(work / "regions.f16", dtype=np.float16, mode="w+", shape=(n, SCALE_R, SCALE_D))
    globals_ = np.memmap(work / "globals.f16", dtype=np.float16, mode="w+", shape=(n, GLOBAL_D))
    topics = np.random.default_rng(8).standard_normal((TOPICS, SCALE_D), dtype=np.float32) / SCALE_D ** 0.5
    for start in range(0, n, CHUNK):
        rng = np.random.default_rng([7, start])
        block = rng.standard_normal((min(CHUNK, n - start), SCALE_R, SCALE_D), dtype=np.float32) / SCALE_D ** 0.5
        block += topics[rng.integers(0, TOPICS, size=len(block))][:, None, :]
        block /= np.linalg.norm(block, axis=2, keepdims=True)
        regions[start:start + len(block)] = block
        globals_[start:start + len(block)] = global_vectors(torch.from_numpy(block),
                                                            torch.full((len(block),), SCALE_R)).numpy()
    regions.flush(), globals_.flush()
    return {"generate_seconds": round(time.perf_counter() - started, 1),
            "disk_GB": round((regions.nbytes + globals_.nbytes) / 1e9, 1)}


def open_gallery(work: Path, n: int) -> tuple[Embeddings, RowFile]:
    """As models.index opens its files: both read with positional reads, nothing mapped."""
    regions = RowFile(work / "regions.f16", (n, SCALE_R, SCALE_D))
    return Embeddings(regions, np.full(n, SCALE_R)), RowFile(work / "globals.f16", (n, GLOBAL_D))


def queries_for(gallery: Embeddings, n_queries: int) -> tuple[np.ndarray, Embeddings]:
    """Captions whose words are noisy copies of WORDS regions of their target image; the first
    ``n_queries`` of one fixed draw, so every phase asks the same questions."""
    targets = np.unique(np.random.default_rng(11).integers(0, len(gallery), size=QUERY_POOL))[:n_queries]
    emb, _ = gallery.take(targets)
    noise = np.random.default_rng(3).standard_normal((QUERY_POOL, WORDS, SCALE_D), dtype=np.float32)[:n_queries]
    noise = torch.from_numpy(noise)
    words = torch.nn.functional.normalize(emb[:, :WORDS] + 0.8 * noise / SCALE_D ** 0.5, dim=2)
    return targets, Embeddings(words, np.full(n_queries, WORDS))


def phase_build(work: Path, n: int, kind: str) -> dict:
    _, globals_ = open_gallery(work, n)
    started = time.perf_counter()
    index = VectorIndex.build(globals_, kind)
    index.save(work / "vectors.faiss")
    return {"kind": index.kind, "build_seconds": round(time.perf_counter() - started, 1)}


def text_encoder() -> TextEncoder:
    """A real-size text encoder (vocabulary 8,500, word 300, bi-GRU 1024), as a Flickr30K model's."""
    torch.manual_seed(0)
    return TextEncoder(8500, ModelConfig()).eval()


@torch.no_grad()
def encode_one(encoder: TextEncoder, rng: np.random.Generator) -> float:
    started = time.perf_counter()
    tokens = torch.as_tensor(rng.integers(4, 8500, size=(1, 14)))
    encoder(tokens, [14])
    return time.perf_counter() - started


@torch.no_grad()
def phase_ours(work: Path, n: int, n_queries: int) -> dict:
    gallery, _ = open_gallery(work, n)
    targets, queries = queries_for(gallery, n_queries)
    index, float32_encoder = VectorIndex.load(work / "vectors.faiss"), text_encoder()
    encoder = query_text_encoder(float32_encoder, "int8")   # what search's "auto" uses for two-stage
    options, latencies, searches, found, encodes, float32_encodes = ModelConfig(), [], [], [], [], []
    for row in range(n_queries):
        float32_encodes.append(encode_one(float32_encoder, np.random.default_rng([1, row])))
        encodes.append(encode_one(encoder, np.random.default_rng([1, row])))
        started = time.perf_counter()
        one = Embeddings(queries.emb[row:row + 1], queries.lens[row:row + 1])
        vectors = global_vectors(one.emb, torch.as_tensor(one.lens)).numpy()
        _, candidates = index.search(vectors, SHORTLIST)
        found.append(rerank(one, gallery, candidates, True, options, 10).indices[0].tolist())
        searches.append(time.perf_counter() - started)
        latencies.append(encodes[-1] + searches[-1])
    started = time.perf_counter()
    _, candidates = index.search(global_vectors(queries.emb, torch.as_tensor(queries.lens)).numpy(), SHORTLIST)
    rerank(queries, gallery, candidates, True, options, 10)
    batched = (time.perf_counter() - started) / n_queries
    return {"latencies": latencies, "search_only": searches, "top10": found, "batched_seconds_per_query": batched,
            "encode_int8": encodes,
            "encode_float32": float32_encodes,
            "target_in_top10": 100.0 * float(np.mean([t in f for t, f in zip(targets, found)]))}


@torch.no_grad()
def phase_legacy(work: Path, n: int, n_queries: int) -> dict:
    """Today's two-stage: float32 first-stage vectors in RAM, brute-force chunked scan, one query at a time."""
    gallery, globals_ = open_gallery(work, n)
    _, queries = queries_for(gallery, n_queries)
    started = time.perf_counter()
    pooled = torch.cat([torch.from_numpy(np.asarray(globals_[s:s + CHUNK], dtype=np.float32))
                        for s in range(0, n, CHUNK)])
    pool_s = time.perf_counter() - started
    encoder, latencies, searches = text_encoder(), [], []
    for row in range(n_queries):
        encode_s = encode_one(encoder, np.random.default_rng([1, row]))
        started = time.perf_counter()
        one = Embeddings(queries.emb[row:row + 1], queries.lens[row:row + 1])
        query = global_vectors(one.emb, torch.as_tensor(one.lens))
        best = Ranking(torch.empty(1, 0, dtype=torch.long), torch.empty(1, 0))
        for start in range(0, n, 8192):
            best = _merge(best, query @ pooled[start:start + 8192].T, start, SHORTLIST)
        candidates = best.indices[0]
        scored = pair_scores(one.rows(0, 1), gallery.take(candidates.numpy()), True, ModelConfig(), 256).float()
        _top_k(scored, candidates[None], 10)
        searches.append(time.perf_counter() - started)
        latencies.append(encode_s + searches[-1])
    return {"latencies": latencies, "search_only": searches, "load_vectors_seconds": round(pool_s, 1)}


@torch.no_grad()
def phase_exact(work: Path, n: int, n_queries: int) -> dict:
    gallery, _ = open_gallery(work, n)
    _, queries = queries_for(gallery, n_queries)
    started = time.perf_counter()
    ranking = exact_search(queries, gallery, True, ModelConfig(), 10, chunk=CHUNK)
    return {"top10": ranking.indices.tolist(), "seconds_per_query": (time.perf_counter() - started) / n_queries}


def phase_index_sizes(work: Path, n: int) -> dict:
    """Single-query latency of flat and IVF, and IVF's recall of flat's top 100, on the first m vectors."""
    _, globals_ = open_gallery(work, n)
    gallery, _ = open_gallery(work, n)
    rows = []
    for m in [m for m in (25_000, 100_000, 200_000, 400_000) if m <= n]:
        _, queries = queries_for(Embeddings(gallery.emb[:m], gallery.lens[:m]), 30)
        vectors = global_vectors(queries.emb, torch.as_tensor(queries.lens)).numpy()
        timing, found = {}, {}
        for kind in ("flat", "ivf"):
            index = VectorIndex.build(globals_[:m], kind)
            started = time.perf_counter()
            found[kind] = [index.search(vectors[q:q + 1], SHORTLIST)[1][0] for q in range(len(vectors))]
            timing[kind] = 1000 * (time.perf_counter() - started) / len(vectors)
        recall = np.mean([len(set(a) & set(b)) / SHORTLIST for a, b in zip(found["flat"], found["ivf"])])
        rows.append({"images": m, "flat_ms": round(timing["flat"], 2), "ivf_ms": round(timing["ivf"], 2),
                     "ivf_recall_of_flat_top100": round(100 * float(recall), 1)})
    return {"rows": rows, "flat_limit": FLAT_LIMIT}


def peak_rss_mb() -> int:
    """This process's peak resident set (VmHWM): getrusage's ru_maxrss can carry the parent's over exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


PHASES = {"build": phase_build, "ours": phase_ours, "legacy": phase_legacy, "exact": phase_exact,
          "index_sizes": phase_index_sizes}


def run_phase(work: Path, phase: str, *args) -> dict:
    """One phase in a fresh process; its result plus that process's peak RSS."""
    command = [sys.executable, __file__, "--phase", phase, "--work", str(work), "--args", json.dumps(args)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def scale_part(work: Path, n: int, n_queries: int, exact_queries: int, sizes: bool) -> dict:
    results = {"images": n, "regions": f"{SCALE_R} x {SCALE_D} float16 on disk", "global_d": GLOBAL_D,
               **generate(work, n)}
    print(json.dumps(results), flush=True)
    results["build"] = run_phase(work, "build", n, "auto")
    ours, legacy = run_phase(work, "ours", n, n_queries), run_phase(work, "legacy", n, n_queries)
    exact = run_phase(work, "exact", n, exact_queries)
    p50, p95 = (float(np.percentile(ours["latencies"], q)) for q in (50, 95))
    legacy_p50 = float(np.percentile(legacy["latencies"], 50))
    search_p50, search_p95 = (float(np.percentile(ours["search_only"], q)) for q in (50, 95))
    legacy_search_p50 = float(np.percentile(legacy["search_only"], 50))
    results.update({
        "search_only_p50_ms": round(1000 * search_p50, 1), "search_only_p95_ms": round(1000 * search_p95, 1),
        "today_search_only_p50_ms": round(1000 * legacy_search_p50, 1),
        "speedup_search_only_p50": round(legacy_search_p50 / search_p50, 1),
        "query_p50_ms": round(1000 * p50, 1), "query_p95_ms": round(1000 * p95, 1),
        "encoder_p50_ms_int8": round(1000 * float(np.percentile(ours["encode_int8"], 50)), 1),
        "encoder_p50_ms_float32": round(1000 * float(np.percentile(ours["encode_float32"], 50)), 1),
        "query_p50_ms_with_float32_encoder": round(1000 * float(np.percentile(
            np.add(ours["encode_float32"], ours["search_only"]), 50)), 1),
        "batched_ms_per_query": round(1000 * ours["batched_seconds_per_query"], 2), "query_peak_rss_MB": ours["rss_MB"],
        "target_in_top10": ours["target_in_top10"],
        "today_two_stage_p50_ms": round(1000 * legacy_p50, 1), "today_peak_rss_MB": legacy["rss_MB"],
        "today_load_vectors_seconds": legacy["load_vectors_seconds"],
        "speedup_p50": round(legacy_p50 / p50, 1),
        "speedup_mean": round(float(np.mean(legacy["latencies"]) / np.mean(ours["latencies"])), 1),
        "exact_seconds_per_query": round(exact["seconds_per_query"], 2), "exact_queries": exact_queries,
        "exact_top1_is_two_stage_top1": 100.0 * float(np.mean([e[0] == o[0]
                                                               for e, o in zip(exact["top10"], ours["top10"])])),
        "exact_top1_in_two_stage_top10": 100.0 * float(np.mean([e[0] in o
                                                                for e, o in zip(exact["top10"], ours["top10"])])),
    })
    if sizes:
        results["index_sizes"] = run_phase(work, "index_sizes", n)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recall", action="store_true", help="Part 1 on the synthetic concept problem.")
    parser.add_argument("--quick", action="store_true", help="Part 1 on 200 test images.")
    parser.add_argument("--demo-workspace", type=Path, help="Part 2 with the models trained in this workspace.")
    parser.add_argument("--scale", type=int, help="Part 3 with a gallery of this many images.")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--exact-queries", type=int, default=8)
    parser.add_argument("--index-sizes", action="store_true", help="Part 3: also flat vs IVF at several sizes.")
    parser.add_argument("--work", type=Path, help="Folder for the scale part's temp files (default: a temp dir).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--phase", choices=tuple(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--args", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = PHASES[args.phase](args.work, *json.loads(args.args))
        print(json.dumps({**result, "rss_MB": peak_rss_mb()}))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_search_", dir=args.work) as tmp:
        if args.recall:
            results["recall"] = recall_part(Path(tmp), 200 if args.quick else 1000)
        if args.demo_workspace is not None:
            results["demo"] = demo_part(args.demo_workspace)
            print(json.dumps(results["demo"], indent=1), flush=True)
        if args.scale:
            results["scale"] = scale_part(Path(tmp), args.scale, args.queries, args.exact_queries, args.index_sizes)
            print(json.dumps(results["scale"], indent=1), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
