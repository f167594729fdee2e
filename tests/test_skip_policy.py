"""CI fails when a test skips for a reason tests/skip_policy.py does not list (LORE_CI_NO_SKIPS=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_pytest(tmp_path: Path, body: str, *, forbid: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text("import pytest\n\n" + body)
    env = {k: v for k, v in os.environ.items() if k != "LORE_CI_NO_SKIPS"}
    if forbid:
        env["LORE_CI_NO_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.skip_policy",
         "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


UNLISTED = 'def test_needs_redis():\n    pytest.skip("no Redis answers PING")\n'
ALLOWED = 'def test_needs_systemd_analyze():\n    pytest.skip("systemd-analyze is not installed")\n'


def test_a_skip_without_an_allowed_reason_fails_the_ci_run_and_is_named(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, UNLISTED, forbid=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED
    assert "test_needs_redis: no Redis answers PING" in result.stdout


def test_a_skip_with_an_allowed_reason_passes_the_ci_run(tmp_path: Path) -> None:
    assert run_pytest(tmp_path, ALLOWED, forbid=True).returncode == pytest.ExitCode.OK


def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path) -> None:
    assert run_pytest(tmp_path, UNLISTED, forbid=False).returncode == pytest.ExitCode.OK


def test_a_failure_keeps_its_own_exit_code(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, UNLISTED + "\n\ndef test_fails():\n    assert False\n", forbid=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED
