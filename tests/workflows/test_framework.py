"""Parameter generation, hashed artifact directories and completion markers, with real luigi runs."""
from __future__ import annotations

import json
from pathlib import Path

import luigi
import pytest

from models.config import ModelConfig, TrainConfig
from pipeline.workspace import MARKER
from workflows.base import ArtifactTask
from workflows.params import config_of, config_parameters


@config_parameters(ModelConfig, exclude=("img_dim",))
@config_parameters(TrainConfig, prefix="train_", rename={"workers": "loader_workers"},
                   insignificant=("workers", "device"))
class _Params(luigi.Task):
    pass


class _Source(ArtifactTask):
    size = luigi.IntParameter(default=3)

    def produce(self, out_dir: Path) -> None:
        (out_dir / "numbers.json").write_text(json.dumps(list(range(self.size))))


class _Sum(ArtifactTask):
    size = luigi.IntParameter(default=3)
    factor = luigi.IntParameter(default=1)

    def requires(self) -> ArtifactTask:
        return self.clone(_Source)

    def produce(self, out_dir: Path) -> None:
        numbers = json.loads((self.requires().artifact_dir / "numbers.json").read_text())
        (out_dir / "sum.json").write_text(json.dumps(self.factor * sum(numbers)))


def test_declared_parameters_round_trip_through_the_command_line() -> None:
    task = _Params.from_str_params({"embed_size": "64", "bi_gru": "false", "agg_func": "LogSumExp",
                                    "train_learning_rate": "5e-4", "loader_workers": "3"})
    model = config_of(task, ModelConfig, presets={"embed_size": 32, "lambda_softmax": 4.0})
    assert (model.embed_size, model.bi_gru, model.agg_func, model.lambda_softmax) == (64, False, "LogSumExp", 4.0)
    assert model.word_dim == ModelConfig().word_dim
    train = config_of(task, TrainConfig)
    assert (train.learning_rate, train.workers, train.margin) == (5e-4, 3, TrainConfig().margin)
    params = dict(_Params.get_params())
    assert "img_dim" not in params and "workers" not in params and "train_workers" not in params
    assert not params["loader_workers"].significant and params["train_margin"].significant
    assert "Triplet loss margin" in params["train_margin"].description
    with pytest.raises(ValueError):
        _Params.from_str_params({"agg_func": "Median"})  # choices come from the field's metadata
    with pytest.raises(ValueError, match="not fields of ModelConfig"):
        config_of(task, ModelConfig, presets={"embed_sise": 32})


def test_upstream_change_gives_new_directories_only_downstream(workspace: Path, ran_tasks: list[str]) -> None:
    assert luigi.build([_Sum(dataset="demo")], local_scheduler=True)
    first_source, first_sum = _Source(dataset="demo").artifact_dir, _Sum(dataset="demo").artifact_dir
    assert (first_sum / MARKER).is_file() and first_sum.is_relative_to(workspace / "_Sum")
    assert _Sum(dataset="demo", factor=2).requires().artifact_dir == first_source
    assert _Sum(dataset="demo", factor=2).artifact_dir != first_sum
    changed = _Sum(dataset="demo", size=4)
    assert changed.requires().artifact_dir != first_source and changed.artifact_dir != first_sum
    ran_tasks.clear()
    assert luigi.build([_Sum(dataset="demo", factor=2)], local_scheduler=True)
    assert ran_tasks == [_Sum(dataset="demo", factor=2).task_id]
    ran_tasks.clear()
    assert luigi.build([changed], local_scheduler=True)
    assert ran_tasks == [changed.requires().task_id, changed.task_id]
    assert json.loads((changed.artifact_dir / "sum.json").read_text()) == 6


def test_second_run_schedules_nothing_and_unmarked_dirs_are_redone(workspace: Path, ran_tasks: list[str]) -> None:
    task = _Sum(dataset="demo")
    assert luigi.build([task], local_scheduler=True)
    ran_tasks.clear()
    assert luigi.build([task], local_scheduler=True)
    assert ran_tasks == []
    (task.artifact_dir / MARKER).unlink()
    assert luigi.build([task], local_scheduler=True)
    assert ran_tasks == [task.task_id]
