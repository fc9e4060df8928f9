"""Parameter generation, hashed artifact directories and completion markers, with real luigi runs."""
from __future__ import annotations

import json
from pathlib import Path

import luigi
import pytest

from models.config import AGG_FUNCS, ModelConfig, TrainConfig
from workflows.base import ArtifactTask
from workflows.params import build_config, config_params
from workflows.workspace import MARKER


class _Params(luigi.Task):
    locals().update(config_params(ModelConfig, choices={"agg_func": AGG_FUNCS}, exclude=("img_dim",)))
    locals().update(config_params(TrainConfig, insignificant=("workers", "device")))


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


def test_generated_parameters_round_trip_through_the_command_line() -> None:
    task = _Params.from_str_params({"embed_size": "64", "bi_gru": "false", "agg_func": "LogSumExp", "learning_rate": "5e-4"})
    model = build_config(task, ModelConfig, presets={"embed_size": 32, "lambda_softmax": 4.0})
    assert (model.embed_size, model.bi_gru, model.agg_func, model.lambda_softmax) == (64, False, "LogSumExp", 4.0)
    assert model.word_dim == ModelConfig().word_dim
    assert build_config(task, TrainConfig).learning_rate == 5e-4
    params = dict(_Params.get_params())
    assert "img_dim" not in params and not params["workers"].significant and params["margin"].significant
    with pytest.raises(ValueError):
        _Params.from_str_params({"agg_func": "Median"})


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
