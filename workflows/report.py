"""Report and TrainSCAN: the results page (models.report) and the command users run."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import luigi

from models.attention_viz import draw_examples
from models.report import write_report
from models.train import BEST_CHECKPOINT
from workflows.data import VOCAB_FILE, BuildVocab, dataset_captions
from models.store_pairs import RESULTS_FILE, TABLE_FILE
from workflows.evaluation import EnsembleSCAN, EvalParams, EvaluateSCAN
from workflows.features import FeatureTask
from workflows.search_index import BuildSearchIndex
from workflows.training import ModelParams, TrainModel

REPORT_FILE = "report.md"
ATTENTION_EXAMPLES = 3
PAPER_FIGURES = {"f30k": "f30k", "coco": "coco5k"}  # datasets the paper reports on


class Report(EvalParams, ModelParams, FeatureTask):
    """`report.md`: recall table beside the paper's, training curves, attention pictures of test pairs."""

    with_ensemble = luigi.BoolParameter(default=False, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                        description="Also train the other preset variants and report their ensemble.")

    def settings(self) -> dict[str, Any]:
        """The evaluations and model come in as upstream keys; the pictures show the first test images."""
        return {"with_ensemble": self.with_ensemble, "examples": ATTENTION_EXAMPLES,
                **self.content_digest(dataset_captions)}

    def requires(self) -> dict[str, Any]:
        tasks: dict[str, Any] = {"single": self.clone(EvaluateSCAN), "model": self.clone(TrainModel),
                                 "index": self.clone(BuildSearchIndex)}
        if self.with_ensemble:
            tasks["ensemble"] = self.clone(EnsembleSCAN)
        return tasks

    def produce(self, out_dir: Path) -> None:
        model = self.clone(TrainModel)
        evaluations = {name: task.artifact_dir / RESULTS_FILE for name, task in self.requires().items()
                       if name not in ("model", "index")}
        examples = [(record.image_id, record.captions[0], record.path)
                    for record in self.load().split("test")[:ATTENTION_EXAMPLES]]
        with tempfile.TemporaryDirectory(dir=out_dir) as drawn:
            pictures = draw_examples(model.artifact_dir / BEST_CHECKPOINT, model.store_dir(),
                                     self.clone(BuildVocab).artifact_dir / VOCAB_FILE, examples, drawn)
            write_report(out_dir, evaluations, train_log=model.artifact_dir, attention_examples=pictures,
                         paper_figures=PAPER_FIGURES.get(self.dataset, {}))


class TrainSCAN(Report):
    """The command: `luigi --module workflows TrainSCAN --dataset demo --local-scheduler`.

    Runs everything (data, features, training, evaluation, report) and prints the recall table.
    The trained model itself is the TrainModel task; this one is the user-facing end of the graph.
    """

    def settings(self) -> dict[str, Any]:
        return {}  # a copy of the Report (its key is upstream) that prints the table

    def requires(self) -> Any:
        return self.clone(Report)

    def produce(self, out_dir: Path) -> None:
        shutil.copytree(self.requires().artifact_dir, out_dir, dirs_exist_ok=True)
        self.print_table()

    def print_table(self) -> None:
        table = (self.clone(EvaluateSCAN).artifact_dir / TABLE_FILE).read_text()
        print(f"\n{table}\nreport: {self.artifact_dir / REPORT_FILE}\n", flush=True)


@TrainSCAN.event_handler(luigi.Event.DEPENDENCY_PRESENT)
def _print_finished_table(task: luigi.Task) -> None:
    """A run with nothing left to do still shows the user their table."""
    if isinstance(task, TrainSCAN):
        task.print_table()
