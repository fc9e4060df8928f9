"""The images' entry point (docker/entrypoint.sh), run here as the shell script it is, without an engine.

A workspace the container user cannot write must be refused before Python starts: one line that
names the folder and the fix, exit 73, the command not run. docker/smoke.sh checks the same inside
real containers (a read-only mount and a folder the engine created owned by root).
"""
from __future__ import annotations

import os
import subprocess
import resource
import tempfile
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"
NOBODY = 65534


def run_entrypoint(workspace: Path, *command: str, home: str = "/nonexistent", as_nobody: bool = False):
    """The result and the CPU seconds the entry point used: its work, which wall time on a busy machine is not
    (CI on two shared cores once took 1.27 s of wall time for it)."""
    env = {"PATH": os.environ["PATH"], "SCAN_WORKSPACE": str(workspace), "HOME": home}
    user = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_nobody else {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(["sh", str(ENTRYPOINT), *command], env=env, capture_output=True, text=True, **user)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.fixture
def unwritable_workspace():
    """A folder this test's user cannot write: root's own folder seen by nobody, else a chmod 555 one."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        Path(folder).chmod(0o755 if os.geteuid() == 0 else 0o555)
        yield Path(folder), os.geteuid() == 0
        Path(folder).chmod(0o755)


def assert_refused(result, cpu_seconds: float, workspace: Path, marker: Path) -> None:
    assert result.returncode == 73, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert f"cannot write the workspace {workspace} as uid" in lines[0]
    assert ('fix: create the host folder yourself and run as its owner, e.g. mkdir -p workspace && '
            'docker run --rm --user "$(id -u):$(id -g)"') in lines[0]
    assert not marker.exists()  # the command never ran
    assert cpu_seconds < 0.5    # a shell check, no Python started


def test_writable_workspace_runs_the_command(tmp_path):
    marker = tmp_path / "ran"
    result, _ = run_entrypoint(tmp_path, "sh", "-c", f'touch {marker}; echo "$0 $1"', "a b", "c")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a b c\n"  # arguments pass through exec unchanged
    assert marker.exists()


def test_exit_status_of_the_command_is_kept(tmp_path):
    result, _ = run_entrypoint(tmp_path, "sh", "-c", "exit 7")
    assert result.returncode == 7


def test_unwritable_workspace_is_refused_in_one_line(unwritable_workspace, tmp_path):
    workspace, as_nobody = unwritable_workspace
    marker = Path("/tmp") / f"entrypoint-marker-{os.getpid()}"
    result, cpu_seconds = run_entrypoint(workspace, "sh", "-c", f"touch {marker}", as_nobody=as_nobody)
    assert_refused(result, cpu_seconds, workspace, marker)


def test_missing_workspace_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    result, cpu_seconds = run_entrypoint(tmp_path / "absent", "sh", "-c", f"touch {marker}")
    assert_refused(result, cpu_seconds, tmp_path / "absent", marker)


def test_unusable_home_is_replaced_by_a_writable_one(tmp_path):
    result, _ = run_entrypoint(tmp_path, "sh", "-c", 'echo "$HOME"; touch "$HOME/probe"', home="/nonexistent")
    assert result.returncode == 0, result.stderr
    home = Path(result.stdout.strip())
    assert home != Path("/nonexistent") and (home / "probe").exists()
    (home / "probe").unlink()
    home.rmdir()


def test_writable_home_is_kept(tmp_path):
    result, _ = run_entrypoint(tmp_path, "sh", "-c", 'echo "$HOME"', home=str(tmp_path))
    assert result.stdout.strip() == str(tmp_path)
