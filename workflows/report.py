"""Report and TrainSCAN: the results table and training curves, and the command users run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import luigi
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first: no display on servers)

from models.train import SUMMARY  # noqa: E402
from workflows.evaluation import RESULTS_FILE, TABLE_FILE, EnsembleSCAN, EvalParams, EvaluateSCAN  # noqa: E402
from workflows.features import FeatureTask  # noqa: E402
from workflows.training import ModelParams, TrainModel  # noqa: E402

REPORT_FILE = "report.md"
CURVES_FILE = "training_curves.png"


def plot_curves(history: list[dict[str, Any]], target: Path) -> None:
    """Dev R@1 of both directions and rsum per epoch, from the trainer's summary.json history."""
    epochs = [entry["epoch"] for entry in history]
    figure, (recall, rsum) = plt.subplots(1, 2, figsize=(9, 3.5))
    for direction in ("i2t", "t2i"):
        recall.plot(epochs, [entry[direction]["r1"] for entry in history], marker="o", label=f"{direction} R@1")
    recall.set(xlabel="epoch", ylabel="dev R@1 (%)", title="Recall@1")
    recall.legend()
    rsum.plot(epochs, [entry["rsum"] for entry in history], marker="o", color="black")
    rsum.set(xlabel="epoch", ylabel="dev rsum", title="rsum")
    figure.tight_layout()
    temp = target.with_name(f".{target.name}.tmp.png")
    figure.savefig(temp, dpi=100)
    plt.close(figure)
    temp.replace(target)


class Report(EvalParams, ModelParams, FeatureTask):
    """`report.md` (recall tables) and `training_curves.png` of the evaluated model (and ensemble)."""

    with_ensemble = luigi.BoolParameter(default=False, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                        description="Also train the other preset variants and report their ensemble.")

    def requires(self) -> dict[str, Any]:
        tasks: dict[str, Any] = {"single": self.clone(EvaluateSCAN), "model": self.clone(TrainModel)}
        if self.with_ensemble:
            tasks["ensemble"] = self.clone(EnsembleSCAN)
        return tasks

    def produce(self, out_dir: Path) -> None:
        history = json.loads((self.clone(TrainModel).artifact_dir / SUMMARY).read_text())["history"]
        if history:
            plot_curves(history, out_dir / CURVES_FILE)
        config = self.eval_config()
        sections = [f"# SCAN on {self.dataset} ({config.split}{', 5-fold 1K' if config.fold5 else ''})", ""]
        for name, task in self.requires().items():
            if name == "model":
                continue
            results = json.loads((task.artifact_dir / RESULTS_FILE).read_text())
            sections += [f"## {name}: {task.key()}", "", "```", (task.artifact_dir / TABLE_FILE).read_text().rstrip(),
                         "```", "", f"rsum {results['rsum']:.1f}", ""]
        if history:
            sections += [f"![training curves]({CURVES_FILE})", ""]
        (out_dir / REPORT_FILE).write_text("\n".join(sections))


class TrainSCAN(Report):
    """The command: `luigi --module workflows TrainSCAN --dataset demo --local-scheduler`.

    Runs everything (data, features, training, evaluation, report) and prints the recall table.
    The trained model itself is the TrainModel task; this one is the user-facing end of the graph.
    """

    def requires(self) -> Any:
        return self.clone(Report)

    def produce(self, out_dir: Path) -> None:
        text = (self.requires().artifact_dir / REPORT_FILE).read_text()
        (out_dir / REPORT_FILE).write_text(text)
        print(f"\n{text}\nartifacts: {self.requires().artifact_dir}\n", flush=True)
