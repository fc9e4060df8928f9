"""The base of every task: a hashed artifact directory, a completion marker, progress reporting."""
from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import luigi
from luigi.task import flatten

from pipeline.workspace import MARKER, artifact_key, workspace_root, write_marker

log = logging.getLogger("luigi-interface")


class ArtifactTask(luigi.Task):
    """A task whose outputs live in `<workspace>/<TaskName>/<dataset>-<hash>/`.

    Subclasses implement `produce(out_dir)`; the marker file is written after it returns, so a
    crash leaves an unmarked directory that the next run completes (and may resume from).
    """

    dataset = luigi.Parameter(description="Dataset name from the registry (demo, f8k, f30k, coco, custom).")

    def settings(self) -> dict[str, Any]:
        """What makes this task's result what it is; default: its significant parameters."""
        return {name: param.serialize(getattr(self, name))
                for name, param in self.get_params() if param.significant}

    def upstream(self) -> list["ArtifactTask"]:
        return [task for task in flatten(self.requires()) if isinstance(task, ArtifactTask)]

    def key(self) -> str:
        return artifact_key(self.get_task_family(), self.dataset, self.settings(),
                            [task.key() for task in self.upstream()])

    @property
    def artifact_dir(self) -> Path:
        return configured_workspace() / self.key()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.artifact_dir / MARKER))

    def run(self) -> Iterator[Any]:
        """produce() may be a generator yielding dynamic dependencies (luigi then re-runs it)."""
        out_dir = self.artifact_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        produced = self.produce(out_dir)
        if inspect.isgenerator(produced):
            yield from produced
        write_marker(out_dir, task_id=self.task_id, key=self.key(), settings=self.settings(),
                     upstream=[task.key() for task in self.upstream()])

    def produce(self, out_dir: Path) -> Optional[Iterator[Any]]:
        raise NotImplementedError

    def report(self, message: str, percentage: float | None = None) -> None:
        """Status for the scheduler's web page and the log."""
        self.set_status_message(message)
        if percentage is not None:
            self.set_progress_percentage(percentage)
        log.info("%s: %s", self.task_id, message)


def configured_workspace() -> Path:
    """The workspace root: $SCAN_WORKSPACE, else luigi.cfg `[scan] workspace`, else ./workspace."""
    return workspace_root(luigi.configuration.get_config().get("scan", "workspace", None))


def config_settings(config: Any) -> dict[str, Any]:
    """A dataclass config as hashable settings (tuples and paths as JSON-friendly values)."""
    return {name: str(value) if isinstance(value, Path) else value
            for name, value in dataclasses.asdict(config).items()}
