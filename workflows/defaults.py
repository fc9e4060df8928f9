"""The workflow's Luigi settings, applied wherever `luigi --module workflows` runs (not only from the repo root).

Luigi reads ./luigi.cfg from the current folder; exit codes that depended on it made a failed run exit
0 elsewhere. These are defaults: a value in any luigi.cfg (or LUIGI_CONFIG_PATH) wins.
"""
from __future__ import annotations

import luigi

DEFAULTS: dict[str, dict[str, str]] = {
    # Exit status of `luigi` so scripts and CI notice failures (0 = everything done).
    "retcode": {"missing_data": "20", "not_run": "25", "task_failed": "30", "scheduling_error": "35",
                "unhandled_exception": "40", "already_running": "10"},
    # A task that raises is not retried within the same command; re-run the command to resume.
    "worker": {"keep_alive": "false", "max_reschedules": "0"},
}


def apply_defaults() -> None:
    """Fill in every default the loaded configuration does not set itself."""
    config = luigi.configuration.get_config()
    for section, values in DEFAULTS.items():
        if not config.has_section(section):
            config.add_section(section)
        for name, value in values.items():
            if not config.has_option(section, name):
                config.set(section, name, value)
