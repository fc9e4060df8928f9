"""Results page of a run: recall table beside the paper's figures, training curves, attention pictures.

``write_report(out_dir, eval_results, train_log, attention_examples, paper_figures)`` writes
``out_dir/report.md`` plus ``training_curves.png`` and copies of the attention PNGs. The
training log is what ``models.train`` writes: ``summary.json`` (per-epoch dev results) and
TensorBoard scalars ``train/loss`` under ``tensorboard/``.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.atomic import atomic_output, write_text_atomic
from pipeline.errors import InputError

RECALLS = ("r1", "r5", "r10")
# Published SCAN results (Lee et al., ECCV 2018, Tables 1 and 2): R@1/5/10 in percent.
PAPER_RESULTS: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "f30k": {
        "SCAN t-i AVG (paper)": {"i2t": {"r1": 61.8, "r5": 87.5, "r10": 93.7},
                                 "t2i": {"r1": 45.8, "r5": 74.4, "r10": 83.0}},
        "SCAN i-t AVG (paper)": {"i2t": {"r1": 67.9, "r5": 89.0, "r10": 94.4},
                                 "t2i": {"r1": 43.9, "r5": 74.2, "r10": 82.8}},
        "SCAN ensemble (paper)": {"i2t": {"r1": 67.4, "r5": 90.3, "r10": 95.8},
                                  "t2i": {"r1": 48.6, "r5": 77.7, "r10": 85.2}},
    },
    "coco5k": {
        "SCAN ensemble (paper)": {"i2t": {"r1": 50.4, "r5": 82.2, "r10": 90.0},
                                  "t2i": {"r1": 38.6, "r5": 69.3, "r10": 80.4}},
    },
}
PROTOCOLS = {"f30k": "Flickr30K 1K test images", "coco5k": "MS-COCO 5K test images"}
CURVES_PNG = "training_curves.png"
ATTENTION_DIR = "attention"


@dataclass(frozen=True)
class EpochLog:
    """One epoch of training: mean logged training loss (None if none was logged) and dev rsum."""

    epoch: int
    loss: float | None
    rsum: float


def read_results(source: Mapping | str | PathLike[str]) -> dict:
    """Evaluation results ``{"i2t": {...}, "t2i": {...}, "rsum"}``, given or from a JSON file."""
    if isinstance(source, Mapping):
        results = dict(source)
        where: str | PathLike[str] = "<results>"
    else:
        where = source
        try:
            results = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(source, f"not a readable results JSON ({error})") from error
    for direction in ("i2t", "t2i"):
        if not isinstance(results.get(direction), Mapping) or not all(k in results[direction] for k in RECALLS):
            raise InputError(where, f"expected R@1/5/10 under '{direction}'", location=direction)
    return results


def read_train_log(run: str | PathLike[str]) -> list[EpochLog]:
    """Per-epoch loss and dev rsum from a training run directory (or its summary.json)."""
    run = Path(run)
    summary_path = run if run.is_file() else run / "summary.json"
    try:
        history = json.loads(summary_path.read_text(encoding="utf-8"))["history"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(summary_path, f"not a training summary with a 'history' ({error})") from error
    losses = _logged_losses(summary_path.parent / "tensorboard")
    logs, previous_step = [], 0
    for entry in history:
        in_epoch = [loss for step, loss in losses if previous_step < step <= entry["step"]]
        logs.append(EpochLog(int(entry["epoch"]), sum(in_epoch) / len(in_epoch) if in_epoch else None,
                             float(entry["rsum"])))
        previous_step = entry["step"]
    return logs


def _logged_losses(tensorboard_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every ``train/loss`` scalar in the run's TensorBoard files."""
    if not tensorboard_dir.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if "train/loss" not in accumulator.Tags().get("scalars", []):
        return []
    return [(event.step, event.value) for event in accumulator.Scalars("train/loss")]


def recall_table(eval_results: Mapping[str, dict], paper: Mapping[str, dict]) -> str:
    """Markdown table: our rows, then the paper's, with R@1/5/10 both ways and rsum."""
    header = "| model | i→t R@1 | R@5 | R@10 | t→i R@1 | R@5 | R@10 | rsum |\n|---|" + "---:|" * 7
    rows = []
    for name, results in [*eval_results.items(), *paper.items()]:
        values = [results[d][k] for d in ("i2t", "t2i") for k in RECALLS]
        rows.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {sum(values):.1f} |")
    return "\n".join([header, *rows])


def plot_curves(logs: Sequence[EpochLog], out_png: Path) -> Path:
    """Training loss and dev rsum per epoch, side by side."""
    figure = Figure(figsize=(9, 3.5), dpi=100)
    loss_ax, rsum_ax = figure.subplots(1, 2)
    with_loss = [log for log in logs if log.loss is not None]
    loss_ax.plot([log.epoch for log in with_loss], [log.loss for log in with_loss], marker="o")
    loss_ax.set(title="training loss (mean of logged steps)", xlabel="epoch", ylabel="loss")
    rsum_ax.plot([log.epoch for log in logs], [log.rsum for log in logs], marker="o", color="tab:green")
    rsum_ax.set(title="dev rsum", xlabel="epoch", ylabel="R@1+5+10, both directions")
    figure.tight_layout()
    FigureCanvasAgg(figure)
    with atomic_output(out_png) as temporary:
        figure.savefig(temporary, format="png")
    return out_png


def write_report(out_dir: str | PathLike[str], eval_results: Mapping[str, Mapping | str | PathLike[str]], *,
                 train_log: str | PathLike[str] | None = None,
                 attention_examples: Sequence[str | PathLike[str]] = (),
                 paper_figures: str | Mapping[str, dict] = "f30k") -> Path:
    """Writes ``out_dir/report.md`` (+ PNGs) and returns its path.

    eval_results: {row name: results dict or path of an evaluation JSON}; train_log: a run
    directory of models.train (or its summary.json); attention_examples: PNGs to show;
    paper_figures: "f30k" | "coco5k" (rows of PAPER_RESULTS) or {row name: results}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = {name: read_results(source) for name, source in eval_results.items()}
    paper = PAPER_RESULTS[paper_figures] if isinstance(paper_figures, str) else paper_figures
    if isinstance(paper_figures, str):
        protocol = PROTOCOLS.get(paper_figures, "same protocol as the paper rows")
    else:
        protocol = "same protocol as the paper rows" if paper else "no published figures for this dataset"
    sections = ["# SCAN results", f"## Retrieval ({protocol})", recall_table(ours, paper), *_left_out(ours)]
    if train_log is not None:
        logs = read_train_log(train_log)
        plot_curves(logs, out_dir / CURVES_PNG)
        sections += ["## Training", f"![training curves]({CURVES_PNG})", _epoch_table(logs)]
    if attention_examples:
        sections += ["## Attention", *(f"![{Path(p).stem}]({_copy_example(Path(p), out_dir)})"
                                       for p in attention_examples)]
    report = out_dir / "report.md"
    write_text_atomic(report, "\n\n".join(sections) + "\n")
    return report


def _left_out(results: Mapping[str, dict]) -> list[str]:
    """A note naming the images an evaluation left out because the store has no features for them."""
    missing = sorted({image for found in results.values() for image in found.get("images_without_features", [])})
    if not missing:
        return []
    shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
    return [f"{len(missing)} evaluation images could not be read by the extractor (see the store's "
            f"failures.parquet) and are left out with their captions: {shown}."]


def _epoch_table(logs: Sequence[EpochLog]) -> str:
    rows = [f"| {log.epoch} | {'-' if log.loss is None else f'{log.loss:.4f}'} | {log.rsum:.1f} |" for log in logs]
    return "\n".join(["| epoch | loss | dev rsum |", "|---:|---:|---:|", *rows])


def _copy_example(path: Path, out_dir: Path) -> str:
    if not path.is_file():
        raise InputError(path, "attention picture not found")
    (out_dir / ATTENTION_DIR).mkdir(exist_ok=True)
    shutil.copyfile(path, out_dir / ATTENTION_DIR / path.name)
    return f"{ATTENTION_DIR}/{path.name}"
