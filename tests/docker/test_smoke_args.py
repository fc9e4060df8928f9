"""docker/smoke.sh without an engine: its arguments, and the README lines it runs verbatim.

The smoke run itself (builds and containers) is not part of the test suite; README, "Docker",
records when it was last run and what it measured.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "docker" / "smoke.sh"


def smoke(*args: str, script: Path = SMOKE, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60, **kwargs)


def test_help_names_every_option():
    result = smoke("--help")
    assert result.returncode == 0
    for option in ("--image cpu|cuda", "--engine", "--install-engine", "--torch-index", "--work", "--keep-images",
                   "--no-compose", "--print-readme-commands"):
        assert option in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--image", "gpu"], "--image must be cpu or cuda, not 'gpu'"),
    (["--engine", "lxc"], "--engine must be auto, docker or podman, not 'lxc'"),
    (["--frobnicate"], "unknown argument: --frobnicate"),
    (["--image"], "--image needs cpu or cuda"),
])
def test_bad_arguments_exit_2_before_touching_anything(args, message, tmp_path):
    result = smoke("--work", str(tmp_path / "work"), *args)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert not (tmp_path / "work").exists()


def test_install_engine_needs_root():
    kwargs = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    result = smoke("--install-engine", **kwargs)
    assert result.returncode == 2
    assert "--install-engine needs root" in result.stderr


def test_the_readme_lines_it_runs_are_the_readme_lines():
    result = smoke("--print-readme-commands")
    assert result.returncode == 0, result.stderr
    run_line, compose_line = result.stdout.splitlines()
    readme = (REPO / "README.md").read_text().splitlines()
    assert run_line in readme and compose_line in readme
    # as the invoking user, into a folder made first: what the engine would create is root's
    assert run_line.startswith("mkdir -p workspace && docker run --rm --user \"$(id -u):$(id -g)\"")
    assert compose_line.startswith("mkdir -p workspace && SCAN_USER=\"$(id -u):$(id -g)\" docker compose")


def test_compose_runs_workspace_services_as_scan_user():
    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    for name in ("dask-scheduler", "dask-worker", "runner"):
        assert services[name]["user"] == "${SCAN_USER:-1000:1000}", name
        assert any(v.endswith(":/workspace") for v in services[name]["volumes"]), name
    assert "user" not in services["luigid"]  # its state volume belongs to the image's user


def test_a_readme_without_the_line_is_refused(tmp_path):
    (tmp_path / "docker").mkdir()
    script = shutil.copy(SMOKE, tmp_path / "docker" / "smoke.sh")
    readme = (REPO / "README.md").read_text()
    run_line = smoke("--print-readme-commands").stdout.splitlines()[0]
    (tmp_path / "README.md").write_text(readme.replace(run_line, run_line + "\n" + run_line))
    result = smoke("--print-readme-commands", script=Path(script))
    assert result.returncode == 1
    assert "README.md: expected one line matching" in result.stderr and "found 2" in result.stderr
    (tmp_path / "README.md").write_text(readme.replace(run_line, ""))
    assert "found 0" in smoke("--print-readme-commands", script=Path(script)).stderr


def test_the_runner_table_is_found_in_a_compose_log_with_terminal_escapes(tmp_path):
    """compose 2.26 writes "ESC[2Krunner-1  | ..." even into a file; the first full smoke run missed the table."""
    log = tmp_path / "compose.log"
    log.write_bytes(b" Container scan-pipeline-runner-1  Started\n"
                    b"\x1b[2Kdask-worker-1  | rsum 1.0\n"
                    b"\x1b[2Krunner-1  | i2t       78.0    95.0    97.0     1.0     1.7\n"
                    b"\x1b[2K\x1b[1;31mrunner-1  | rsum     545.0\n"
                    b"runner-1  | plain line\n")
    result = subprocess.run(["bash", "-c", f'source "{SMOKE}" && runner_lines "{log}"'], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["i2t       78.0    95.0    97.0     1.0     1.7", "rsum     545.0",
                                          "plain line"]
