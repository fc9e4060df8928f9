"""The `shared_data` fixture: a developer without ../shared/data gets skips, CI gets failures."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

NEEDS_FIXTURES = '''
def test_needs_the_real_fixtures(shared_data):
    assert shared_data.is_dir()
'''


@pytest.mark.parametrize(("ci", "outcome", "exit_code"), [("true", "1 error", 1), ("", "1 skipped", 0)])
def test_missing_fixtures_fail_under_ci_and_skip_elsewhere(tmp_path: Path, ci: str,
                                                           outcome: str, exit_code: int) -> None:
    checkout = tmp_path / "checkout"  # no ../shared beside it
    (checkout / "tests").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "conftest.py", checkout / "tests" / "conftest.py")
    (checkout / "tests" / "__init__.py").write_text("")
    (checkout / "tests" / "test_uses_fixtures.py").write_text(NEEDS_FIXTURES)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests"],
                            cwd=checkout, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "CI": ci},
                            timeout=120)
    assert result.returncode == exit_code and outcome in result.stdout, result.stdout + result.stderr
    assert "shared fixtures not found" in result.stdout
