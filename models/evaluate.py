"""Image-text retrieval evaluation of SCAN models: encode, score, rank, recall.

Protocols as the reference's ``evalrank``: Flickr30K 1K test (all images of the split);
COCO 5-fold 1K (fold i: images [i*1000:(i+1)*1000], captions [i*5000:(i+1)*5000], metrics
averaged) or the full 5K (``testall``); dev: the reference's first 1000 images / 5000 captions
(``reference_dev``) or all of them. Caption j belongs to image j // 5; an image query's rank is
the best rank among its captions. One tie rule serves every protocol (``tie_rank``): a query's
rank counts the wrong candidates scored at or above its best true one, so an exact tie counts
against the query. Several models form an ensemble by averaging their similarity matrices.

Besides SCAN (``exact``), the same protocols rank with the global head alone (``global``: cosine of
one vector per image and caption) and with the two-stage combination (``two-stage``: per query, the
global top N re-ranked by SCAN, the rest after them in global order), so one run compares all three.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.config import EvalConfig
from models.data import CAPTIONS_PER_IMAGE, CaptionPairs, first_images, pad_captions
from models.encoders import SCANModel
from models.scan import scores_within_budget
from pipeline.atomic import atomic_output, write_text_atomic

RECALL_AT = (1, 5, 10)
FOLD_IMAGES = 1000
RANK_CHUNK = 1024  # query rows per comparison block in the rank computation
REFERENCE_DEV_IMAGES = 1000  # the reference's loader cuts dev to 5000 captions (data.py PrecompDataset)
SHORTLIST_OFFSET = 1e6  # lifts re-ranked SCAN scores above every global score in the two-stage order


@dataclass(frozen=True)
class Encoded:
    """Embeddings of one evaluation split: img_emb (n_img, R, d), cap_emb (n_cap, W, d)."""

    img_emb: Tensor
    img_lens: Tensor
    cap_emb: Tensor
    cap_lens: Tensor
    img_vec: Tensor | None = None   # (n_img, d) global vectors, when asked for
    cap_vec: Tensor | None = None   # (n_cap, d)


@dataclass(frozen=True)
class Protocol:
    """Which part of a split is scored: ``images`` / ``captions`` of the split's ``total_*``."""

    split: str
    reference_dev: bool
    images: int
    captions: int
    total_images: int
    total_captions: int

    def describe(self) -> str:
        """One line for the output, so printed numbers say what they were computed on."""
        scored = f"{self.images} images / {self.captions} captions"
        if self.split != "dev":
            return f"{self.split}: {scored}"
        if not self.reference_dev:
            return f"dev, full split: {scored} (the reference scores the first {REFERENCE_DEV_IMAGES} images)"
        if self.images < REFERENCE_DEV_IMAGES:
            return (f"dev, reference protocol: all {scored}; the reference needs {REFERENCE_DEV_IMAGES} images "
                    "and fails on fewer")
        return (f"dev, reference protocol: the first {scored} of {self.total_images} / {self.total_captions} "
                "(--no-reference-dev: all)")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "description": self.describe()}


def evaluation_pairs(pairs: CaptionPairs, split: str, reference_dev: bool) -> tuple[CaptionPairs, Protocol]:
    """The part of SCAN precomp ``pairs`` a split is scored on: dev with ``reference_dev`` keeps
    the first 1000 images and their 5000 captions (the reference's loader stops there); every
    other split, or dev without it, is scored whole."""
    scored = first_images(pairs, REFERENCE_DEV_IMAGES) if split == "dev" and reference_dev else pairs
    protocol = Protocol(split, reference_dev, len(scored.regions), len(scored), len(pairs.regions), len(pairs))
    return scored, protocol


@torch.no_grad()
def encode_split(model: SCANModel, pairs: CaptionPairs, config: EvalConfig, device: torch.device,
                 progress: bool = False, vectors: bool = False) -> Encoded:
    """Encodes every image of ``pairs.regions`` once and every caption, in batches, on ``device``;
    with ``vectors`` also their global vectors (the model's head, or mean pooling without one)."""
    model.eval()
    n_img = len(pairs.regions)
    img_chunks, img_lens, img_vec = [], [], []
    for start in tqdm(range(0, n_img, config.batch_size), desc="images", disable=not progress):
        features, num_boxes = pairs.regions.read(np.arange(start, min(start + config.batch_size, n_img)))
        img_chunks.append(model.img_enc(torch.from_numpy(features).to(device)))
        img_lens.append(torch.as_tensor(num_boxes, dtype=torch.long))
        if vectors:
            img_vec.append(model.image_vectors(img_chunks[-1], img_lens[-1].to(device)))
    cap_chunks, cap_lens, cap_vec = [], [], []
    for start in tqdm(range(0, len(pairs), config.batch_size), desc="captions", disable=not progress):
        tokens, lengths = pad_captions(pairs.captions[start:start + config.batch_size])
        cap_emb, _ = model.txt_enc(tokens.to(device), lengths)
        cap_chunks.append(cap_emb)
        cap_lens.append(lengths)
        if vectors:
            cap_vec.append(model.text_vectors(cap_emb, lengths.to(device)))
    width = max(chunk.size(1) for chunk in cap_chunks)
    cap_emb = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, width - c.size(1))) for c in cap_chunks])
    return Encoded(torch.cat(img_chunks), torch.cat(img_lens), cap_emb, torch.cat(cap_lens),
                   torch.cat(img_vec) if vectors else None, torch.cat(cap_vec) if vectors else None)


def global_similarity(encoded: Encoded, images: slice = slice(None), captions: slice = slice(None)) -> np.ndarray:
    """(n_img, n_cap) float32 inner products of the global vectors (cosines for a trained head)."""
    if encoded.img_vec is None or encoded.cap_vec is None:
        raise ValueError("global similarity needs vectors: encode_split(..., vectors=True)")
    return (encoded.img_vec[images].float() @ encoded.cap_vec[captions].float().T).cpu().numpy()


@torch.no_grad()
def similarity_matrix(model: SCANModel, encoded: Encoded, config: EvalConfig,
                      images: slice = slice(None), captions: slice = slice(None)) -> np.ndarray:
    """(n_img, n_cap) float32 scores of the selected images and captions, chunked by memory budget."""
    scores = scores_within_budget(encoded.img_emb[images], encoded.cap_emb[captions],
                                  encoded.cap_lens[captions], model.config,
                                  img_lens=encoded.img_lens[images], memory_mb=config.score_memory_mb,
                                  fused_kernel=None if config.fused_scores else False)
    return scores.float().cpu().numpy()


def i2t_ranks(sims: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """(n_img,) 0-based rank of the best-ranked true caption of each image query."""
    _check_similarities(sims, per_image)
    n_img = sims.shape[0]
    true = sims.reshape(n_img, n_img, per_image)[np.arange(n_img), np.arange(n_img)]  # (n_img, per_image)
    best_true = true.max(axis=1)
    return tie_rank(sims, best_true, (true == best_true[:, None]).sum(axis=1))


def t2i_ranks(sims: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """(n_cap,) 0-based rank of the true image of each caption query."""
    _check_similarities(sims, per_image)
    n_cap = sims.shape[1]
    true = sims[np.arange(n_cap) // per_image, np.arange(n_cap)]
    return tie_rank(sims.T, true, np.ones(n_cap, dtype=np.int64))


def tie_rank(scores: np.ndarray, best_true: np.ndarray, true_at_best: np.ndarray) -> np.ndarray:
    """The rank rule of every protocol: how many wrong candidates score at or above the best true one.

    ``scores`` (n_query, n_candidates), ``best_true`` (n_query,) the best true candidate's score,
    ``true_at_best`` (n_query,) how many true candidates reach it (they are not competitors).
    An exact tie with a wrong candidate counts against the query: the worst position any
    tie-breaking order could give it. The reference's reversed argsort breaks ties in whatever
    order numpy's unstable sort leaves them, so only exact ties can rank differently.
    """
    at_or_above = np.concatenate([(scores[s] >= best_true[s, None]).sum(axis=1)
                                  for s in _chunks(len(best_true))])
    return (at_or_above - true_at_best).astype(np.int64)


def recall_summary(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 in percent, median and mean rank (1-based), as the reference."""
    summary = {f"r{k}": float(100.0 * np.mean(ranks < k)) for k in RECALL_AT}
    summary["medr"] = float(np.floor(np.median(ranks)) + 1)
    summary["meanr"] = float(ranks.mean() + 1)
    return summary


def retrieval_results(sims: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE) -> tuple[dict, dict]:
    """({"i2t": {...}, "t2i": {...}, "rsum": x}, {"i2t": ranks, "t2i": ranks}) of one matrix."""
    ranks = {"i2t": i2t_ranks(sims, per_image), "t2i": t2i_ranks(sims, per_image)}
    i2t, t2i = recall_summary(ranks["i2t"]), recall_summary(ranks["t2i"])
    return {"i2t": i2t, "t2i": t2i, "rsum": _rsum(i2t, t2i)}, ranks


def fold_slices(n_img: int, fold5: bool, per_image: int = CAPTIONS_PER_IMAGE,
                fold_images: int = FOLD_IMAGES) -> list[tuple[slice, slice]]:
    """One (images, captions) slice pair for the whole split, or the five COCO 1K folds."""
    if not fold5:
        return [(slice(0, n_img), slice(0, n_img * per_image))]
    if n_img != 5 * fold_images:
        raise ValueError(f"fold5 needs 5 x {fold_images} images (the COCO 5K test), got {n_img}")
    return [(slice(i * fold_images, (i + 1) * fold_images),
             slice(i * fold_images * per_image, (i + 1) * fold_images * per_image)) for i in range(5)]


def average_results(results: Sequence[dict]) -> dict:
    """Mean of every metric over folds; rsum recomputed from the mean recalls (as the reference)."""
    mean = {direction: {key: float(np.mean([r[direction][key] for r in results]))
                        for key in results[0][direction]} for direction in ("i2t", "t2i")}
    return {**mean, "rsum": _rsum(mean["i2t"], mean["t2i"])}


def evaluate_models(models: Sequence[SCANModel], pairs: CaptionPairs, config: EvalConfig,
                    device: torch.device, progress: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """Results and per-query ranks of one model, or of an ensemble (similarities averaged).

    ``pairs`` must hold the split's images and 5 captions each, caption j of image j // 5. With
    ``config.modes`` other than ("exact",), results of the first mode stay at the top level and
    every mode's table is under "modes" (ranks under "<mode>_<direction>" for the others).
    """
    expected = np.arange(len(pairs)) // CAPTIONS_PER_IMAGE
    if len(pairs) != CAPTIONS_PER_IMAGE * len(pairs.regions) or not np.array_equal(pairs.image_index, expected):
        raise ValueError(f"evaluation needs caption j paired with image j // {CAPTIONS_PER_IMAGE} "
                         f"({len(pairs)} captions, {len(pairs.regions)} images)")
    vectors = any(mode != "exact" for mode in config.modes)
    encodings = [encode_split(model, pairs, config, device, progress, vectors) for model in models]

    def scan(images: slice, captions: slice) -> np.ndarray:
        return np.mean([similarity_matrix(m, e, config, images, captions)
                        for m, e in zip(models, encodings)], axis=0)

    def pooled(images: slice, captions: slice) -> np.ndarray:
        return np.mean([global_similarity(e, images, captions) for e in encodings], axis=0)

    def staged(images: slice, captions: slice) -> dict[str, np.ndarray]:
        return two_stage_ranks(scan(images, captions), pooled(images, captions), config.shortlist_fraction)

    rankers = {"exact": lambda i, c: _ranks_of(scan(i, c)), "global": lambda i, c: _ranks_of(pooled(i, c)),
               "two-stage": staged}
    outcomes = {mode: evaluate_ranked(rankers[mode], len(pairs.regions), config.fold5) for mode in config.modes}
    first = config.modes[0]
    results, ranks = outcomes[first]
    if len(config.modes) == 1 and first == "exact":
        return results, ranks
    results = {**results, "modes": {mode: outcome[0] for mode, outcome in outcomes.items()}}
    if "two-stage" in outcomes:
        n_img = len(pairs.regions) // (5 if config.fold5 else 1)
        results["modes"]["two-stage"]["shortlist"] = shortlist_sizes(n_img, config.shortlist_fraction)
    for mode, (_, mode_ranks) in outcomes.items():
        if mode != first:
            ranks.update({f"{mode}_{direction}": values for direction, values in mode_ranks.items()})
    return results, ranks


def shortlist_sizes(n_img: int, fraction: float, per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, int]:
    """Items re-ranked per query: ``fraction`` of the images (t2i) or of the captions (i2t), at least 1."""
    return {"t2i": max(1, int(round(fraction * n_img))), "i2t": max(1, int(round(fraction * n_img * per_image)))}


def two_stage_ranks(scan: np.ndarray, pooled: np.ndarray, fraction: float,
                    per_image: int = CAPTIONS_PER_IMAGE) -> dict[str, np.ndarray]:
    """Ranks of two-stage retrieval on (n_img, n_cap) SCAN and global scores.

    Per query, the ``fraction`` of the gallery with the best global scores is ordered by SCAN and
    placed first; the rest follows in global order (so every rank is defined, as the protocol needs).
    """
    sizes = shortlist_sizes(scan.shape[0], fraction, per_image)
    by_caption = _shortlisted_first(scan, pooled, sizes["t2i"], axis=0)   # each caption ranks images
    by_image = _shortlisted_first(scan, pooled, sizes["i2t"], axis=1)     # each image ranks captions
    return {"i2t": i2t_ranks(by_image, per_image), "t2i": t2i_ranks(by_caption, per_image)}


def _shortlisted_first(scan: np.ndarray, pooled: np.ndarray, size: int, axis: int) -> np.ndarray:
    """SCAN + offset on each query's top ``size`` global items (along ``axis``), global - offset elsewhere."""
    size = min(size, scan.shape[axis])
    top = np.argpartition(-pooled, size - 1, axis=axis)
    top = top[:size] if axis == 0 else top[:, :size]
    chosen = np.zeros(scan.shape, dtype=bool)
    np.put_along_axis(chosen, top, True, axis=axis)
    return np.where(chosen, scan.astype(np.float64) + SHORTLIST_OFFSET, pooled.astype(np.float64) - SHORTLIST_OFFSET)


def _ranks_of(sims: np.ndarray) -> dict[str, np.ndarray]:
    return {"i2t": i2t_ranks(sims), "t2i": t2i_ranks(sims)}


def evaluate_similarities(similarities: Callable[[slice, slice], np.ndarray], n_img: int, fold5: bool,
                          fold_images: int = FOLD_IMAGES) -> tuple[dict, dict[str, np.ndarray]]:
    """Runs the protocol on ``similarities(images, captions)`` blocks: the whole split, or the 5
    folds with metrics averaged (per-fold results under "folds"); ranks concatenated over folds."""
    return evaluate_ranked(lambda images, captions: _ranks_of(similarities(images, captions)), n_img, fold5,
                           fold_images)


def evaluate_ranked(ranker: Callable[[slice, slice], dict[str, np.ndarray]], n_img: int, fold5: bool,
                    fold_images: int = FOLD_IMAGES) -> tuple[dict, dict[str, np.ndarray]]:
    """As ``evaluate_similarities`` from per-query ranks ``{"i2t", "t2i"}`` of each (images, captions) block."""
    per_fold, ranks = [], {"i2t": [], "t2i": []}
    for images, captions in fold_slices(n_img, fold5, fold_images=fold_images):
        fold_ranks = ranker(images, captions)
        i2t, t2i = recall_summary(fold_ranks["i2t"]), recall_summary(fold_ranks["t2i"])
        per_fold.append({"i2t": i2t, "t2i": t2i, "rsum": _rsum(i2t, t2i)})
        for direction in ranks:
            ranks[direction].append(fold_ranks[direction])
    results = {**average_results(per_fold), "folds": per_fold} if fold5 else per_fold[0]
    return results, {direction: np.concatenate(r) for direction, r in ranks.items()}


def format_table(results: dict) -> str:
    """A fixed-width table: one row per direction, then rsum; then the same for every other mode."""
    keys = ("r1", "r5", "r10", "medr", "meanr")
    header = f"{'':6}" + "".join(f"{name:>8}" for name in ("R@1", "R@5", "R@10", "medr", "meanr"))
    rows = [f"{d:6}" + "".join(f"{results[d][k]:8.1f}" for k in keys) for d in ("i2t", "t2i")]
    blocks = ["\n".join([header, *rows, f"{'rsum':6}{results['rsum']:8.1f}"])]
    modes = results.get("modes", {})
    for mode in list(modes)[1:]:
        shortlist = modes[mode].get("shortlist")
        title = f"{mode} (N = {shortlist['t2i']} images / {shortlist['i2t']} captions)" if shortlist else mode
        blocks.append(f"{title}:\n" + format_table({key: modes[mode][key] for key in ("i2t", "t2i", "rsum")}))
    return "\n\n".join(blocks)


def save_results(results: dict, ranks: dict[str, np.ndarray], json_path: str | PathLike[str]) -> None:
    """Writes the JSON and, beside it, ``<stem>_i2t_ranks.npy`` / ``<stem>_t2i_ranks.npy``; atomically."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for direction, values in ranks.items():
        with atomic_output(json_path.with_name(f"{json_path.stem}_{direction}_ranks.npy")) as temporary:
            with open(temporary, "wb") as stream:  # a file object: np.save would add ".npy" to a path
                np.save(stream, values)
    write_text_atomic(json_path, json.dumps(results, indent=2))


def _rsum(i2t: dict[str, float], t2i: dict[str, float]) -> float:
    return float(sum(i2t[f"r{k}"] + t2i[f"r{k}"] for k in RECALL_AT))


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + RANK_CHUNK, n)) for start in range(0, n, RANK_CHUNK)]


def _check_similarities(sims: np.ndarray, per_image: int) -> None:
    if sims.ndim != 2 or sims.shape[1] != sims.shape[0] * per_image:
        raise ValueError(f"similarities {sims.shape} must be (n_img, {per_image} * n_img)")
    if not np.isfinite(sims).all():
        raise ValueError("similarities hold NaN or infinite values: no rank is meaningful")
